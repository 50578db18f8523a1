"""Text under a node, read-only: ComfyUI's progress-text message, which the front end draws below the node's widgets
(multi-line, inside the node's own size, so no other node moves)."""

from __future__ import annotations

import sys


def show_under_node(node_id: str | None, text: str) -> None:
    """Send ``text`` to the node ``node_id`` of the running prompt (nothing happens outside a server)."""
    # ComfyUI's server module, which its main.py imported (importing it here would load ComfyUI's own nodes)
    server = sys.modules.get("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    if node_id is None or instance is None:
        return
    instance.send_progress_text(text, node_id)
