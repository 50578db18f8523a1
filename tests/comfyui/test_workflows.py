"""The shipped workflows: the API twin passes ComfyUI's validation, and the UI file converts to exactly that twin."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dax_core.demo.comfy_server import ComfyServer, PromptFailed, PromptRejected
from dax_core.demo.run import WORKFLOW, load_workflow

pytestmark = pytest.mark.comfyui

UI_WORKFLOW = WORKFLOW.with_name(WORKFLOW.name.replace(".api.json", ".json"))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
LOADERS = {"DaxLoadWan", "CLIPLoader", "VAELoader"}


def _widget_values(node: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """Widget name -> value, read from ``widgets_values`` the way ComfyUI's frontend lays them out."""
    values = list(node["widgets_values"])
    out: dict[str, Any] = {}
    for section in ("required", "optional"):
        for name in info["input_order"].get(section, []):
            spec = info["input"][section][name]
            options = spec[1] if len(spec) > 1 else {}
            is_widget = isinstance(spec[0], list) or spec[0] in WIDGET_TYPES
            if not is_widget or options.get("forceInput"):
                continue
            assert values, f"node {node['id']} ({node['type']}): no widget value left for {name}"
            out[name] = values.pop(0)
            if spec[0] == "INT" and (options.get("control_after_generate") or name in ("seed", "noise_seed")):
                control = values.pop(0)  # the frontend's "control after generate" widget, not sent to the server
                assert control in ("fixed", "increment", "decrement", "randomize"), control
    assert not values, f"node {node['id']} ({node['type']}): unused widget values {values}"
    return out


def ui_to_api(ui: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """The API prompt ComfyUI's editor sends for a UI-format workflow (active nodes, no ``_meta``)."""
    links = {link[0]: link for link in ui["links"]}
    prompt = {}
    for node in ui["nodes"]:
        assert node["type"] in object_info, f"ComfyUI has no node type {node['type']}"
        inputs = _widget_values(node, object_info[node["type"]])
        for slot in node["inputs"]:
            if slot.get("link") is not None:
                _, src, src_slot, dst, _dst_slot, _type = links[slot["link"]]
                assert dst == node["id"], f"link {slot['link']} does not end at node {node['id']}"
                inputs[slot["name"]] = [str(src), src_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def test_ui_workflow_is_well_formed() -> None:
    ui = json.loads(UI_WORKFLOW.read_text(encoding="utf-8"))
    assert ui["version"] == 0.4
    nodes = {node["id"]: node for node in ui["nodes"]}
    assert ui["last_node_id"] == max(nodes) and ui["last_link_id"] == max(link[0] for link in ui["links"])
    for link_id, src, src_slot, dst, dst_slot, link_type in ui["links"]:
        out, inp = nodes[src]["outputs"][src_slot], nodes[dst]["inputs"][dst_slot]
        assert link_id in out["links"] and inp["link"] == link_id, f"link {link_id} is not wired at both ends"
        assert out["type"] == inp["type"] == link_type, f"link {link_id} joins {out['type']} to {inp['type']}"
    wired = {i["link"] for n in nodes.values() for i in n["inputs"] if i.get("link") is not None}
    wired |= {link for n in nodes.values() for o in n["outputs"] for link in o["links"] or []}
    assert wired == {link[0] for link in ui["links"]}, "nodes name links the links array lacks, or the reverse"
    for node in nodes.values():
        assert len(node["pos"]) == 2 and len(node["size"]) == 2 and node["mode"] == 0


def test_ui_and_api_twins_agree(comfy_server: ComfyServer) -> None:
    ui = json.loads(UI_WORKFLOW.read_text(encoding="utf-8"))
    api = load_workflow()
    assert ui_to_api(ui, comfy_server.object_info()) == {
        node_id: {"class_type": node["class_type"], "inputs": node["inputs"]} for node_id, node in api.items()
    }
    titles = {str(node["id"]): node.get("title") for node in ui["nodes"]}
    assert titles == {node_id: node["_meta"]["title"] for node_id, node in api.items()}


def test_shipped_workflow_passes_validation(comfy_server: ComfyServer) -> None:
    # POST /prompt validates the whole graph (types, links, value ranges, file lists) before queueing it.
    prompt_id = comfy_server.queue_prompt(load_workflow())
    # The files under the workflow's names are empty placeholders, so running stops at the first loader.
    with pytest.raises(PromptFailed) as failed:
        comfy_server.wait_for(prompt_id, timeout=120)
    assert failed.value.node_type in LOADERS


def test_unknown_model_file_is_rejected_with_node_errors(comfy_server: ComfyServer) -> None:
    prompt = load_workflow()
    loader_id = next(k for k, node in prompt.items() if node["class_type"] == "DaxLoadWan")
    prompt[loader_id]["inputs"]["model_name"] = "no_such_model.safetensors"
    with pytest.raises(PromptRejected) as rejected:
        comfy_server.queue_prompt(prompt)
    assert set(rejected.value.node_errors) == {loader_id}
    assert rejected.value.node_errors[loader_id]["class_type"] == "DaxLoadWan"
    assert "no_such_model.safetensors" in str(rejected.value)
