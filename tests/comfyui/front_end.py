"""Driving ComfyUI's own front end in a headless Chromium (Debian's ``chromium``, through Playwright for Python).

Only 127.0.0.1 is reachable from the page: every other request is aborted, so nothing is fetched from outside and
the front end works as it does offline. What the tests read is what the front end drew: DOM text and images, and
the widgets of the graph the page holds (``app.graph``).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

CHROMIUM = "/usr/bin/chromium"
LAUNCH_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1600, "height": 1000}
PACK_CATEGORY = "ComfyUI-DAX"  # the template browser's category of this pack: its folder name in custom_nodes
SAMPLER = "DaxMultiGPUSampler"
STATUS_WIDGET = "$$node-text-preview"  # the widget the front end adds for a node's progress text
TITLE_HEIGHT = 30  # LiteGraph draws a node's title bar above its ``pos``


def chromium() -> str | None:
    """Debian's Chromium, where it is installed."""
    found = shutil.which("chromium")
    return found or (CHROMIUM if Path(CHROMIUM).is_file() else None)


def _local_only(route: Any) -> None:
    if urlparse(route.request.url).hostname == "127.0.0.1":
        route.continue_()
    else:
        route.abort()


@contextmanager
def front_end(url: str, executable: str) -> Iterator[Any]:
    """A page with ComfyUI's front end from ``url`` loaded; the browser is closed on exit."""
    from playwright.sync_api import sync_playwright  # a test dependency: missing, it is an error, not a skip

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=LAUNCH_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.errors = []  # what the page logged as errors, for the failure messages
            page.on("console", lambda msg: msg.type == "error" and page.errors.append(msg.text))
            page.route("**/*", _local_only)
            page.goto(url)
            page.wait_for_function("window.app?.graph && window.app.extensionManager?.command", timeout=90_000)
            yield page
        finally:
            browser.close()


CARDS = "[data-testid^='template-workflow-']"


def _listed(page: Any) -> list[str]:
    names = page.eval_on_selector_all(CARDS, "cards => cards.map(c => c.dataset.testid)")
    return [name.removeprefix("template-workflow-") for name in names]


def open_template_browser(page: Any) -> list[str]:
    """Open the template browser on this pack's category; returns the templates it lists, in order."""
    page.evaluate("app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    page.locator(CARDS).first.wait_for(timeout=30_000)  # the category shown first (ComfyUI's own templates)
    before = _listed(page)
    page.get_by_text(PACK_CATEGORY, exact=True).click()
    page.wait_for_function(
        "([selector, before]) => { const names = [...document.querySelectorAll(selector)].map(c => c.dataset.testid);"
        " return names.length > 0 && names.join() !== before.map(n => 'template-workflow-' + n).join() }",
        arg=[CARDS, before],
        timeout=30_000,
    )
    return _listed(page)


def card_thumbnail(page: Any, template: str) -> dict[str, Any]:
    """The card's picture as the page decoded it: its natural size (0 when it did not load). The card is scrolled
    into view first, as a user would: the browser loads a card's picture once it is on screen."""
    card = page.locator(f"[data-testid='template-workflow-{template}']")
    card.scroll_into_view_if_needed(timeout=30_000)
    image = card.locator("img").first
    image.wait_for(timeout=30_000)
    page.wait_for_function("i => i.complete", arg=image.element_handle(), timeout=30_000)
    return image.evaluate("i => ({width: i.naturalWidth, height: i.naturalHeight})")


def open_template(page: Any, template: str, node_types: list[str], timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Click the template's card and wait until the canvas holds a graph of these node types; returns its nodes.

    (The browser closes before the graph loads, and an earlier graph may still be there: only the types tell.)"""
    page.locator(f"[data-testid='template-workflow-{template}']").click()
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = graph_nodes(page)
        if sorted(n["type"] for n in nodes) == sorted(node_types):
            return nodes
        if time.monotonic() > deadline:
            raise AssertionError(
                f"template {template!r} did not open: the canvas holds {[n['type'] for n in nodes]}, "
                f"expected {sorted(node_types)}; the page logged {page.errors[-5:]}"
            )
        time.sleep(0.2)


def graph_nodes(page: Any) -> list[dict[str, Any]]:
    """The nodes of the graph on the canvas: id, type, title, position and size as the front end holds them."""
    return page.evaluate(
        "app.graph._nodes.map(n => ({id: n.id, type: n.type, title: n.title, pos: [...n.pos], size: [...n.size]}))"
    )


def set_widgets(page: Any, values: dict[str, Any]) -> None:
    """Set every widget of these names on any node, as a user would type the values."""
    page.evaluate(
        """values => { for (const n of app.graph._nodes) for (const w of n.widgets ?? [])
             if (w.name in values) { w.value = values[w.name]; w.callback?.(w.value) }
           app.graph.setDirtyCanvas(true, true) }""",
        values,
    )


def show_node(page: Any, node_type: str, scale: float = 1.0) -> None:
    """Move the canvas so the first node of ``node_type`` is on screen, at ``scale``."""
    page.evaluate(
        """([type, scale]) => { const n = app.graph._nodes.find(n => n.type === type);
             app.canvas.ds.scale = scale; app.canvas.ds.offset = [120 / scale - n.pos[0], 60 / scale - n.pos[1]];
             app.graph.setDirtyCanvas(true, true) }""",
        [node_type, scale],
    )


RECORDER = """([type, widget]) => {
  window.__daxSeen = [];
  const visible = e => { const r = e.getBoundingClientRect(), s = getComputedStyle(e);
    return r.width > 0 && r.height > 0 && s.display !== 'none' && s.visibility !== 'hidden' && s.opacity !== '0'
      && r.bottom > 0 && r.right > 0 && r.top < innerHeight && r.left < innerWidth };
  const tick = () => {
    const n = app.graph._nodes.find(n => n.type === type);
    const value = n?.widgets?.find(w => w.name === widget)?.value ?? null;
    const shown = [...document.querySelectorAll('.dom-widget')].filter(visible).map(e => e.innerText.trim())
      .find(t => /^(step \\d+ \\/ \\d+|\\d+ steps? in)/.test(t)) ?? null;
    const img = n?.imgs?.[0];
    const preview = img && img.complete ? img.naturalWidth : 0;
    const last = window.__daxSeen.at(-1);
    if (!last || last.value !== value || last.shown !== shown || last.preview !== preview)
      window.__daxSeen.push({value, shown, preview, t: performance.now()});
    if (!window.__daxStop) requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}"""


def record_status(page: Any, node_type: str = SAMPLER) -> None:
    """From now on, note every change of the node's status (widget value, the status text drawn on screen, the
    width of its preview image) on every animation frame; ``recorded_status`` returns them."""
    page.evaluate(RECORDER, [node_type, STATUS_WIDGET])


def recorded_status(page: Any) -> list[dict[str, Any]]:
    return page.evaluate("window.__daxSeen")


def show_text(page: Any, node_type: str, text: str) -> None:
    """Hand the node's progress text to the front end as its websocket message does (the front end's own
    ``progress_text`` event), so the front end draws it as it draws what the server sends."""
    page.evaluate(
        """([type, text]) => { for (const n of app.graph._nodes.filter(n => n.type === type))
             app.api.dispatchCustomEvent('progress_text', { nodeId: String(n.id), text }) }""",
        [node_type, text],
    )


def text_boxes(page: Any) -> list[dict[str, Any]]:
    """Every drawn progress text: its text, its visible height and the height the text needs."""
    return page.evaluate(
        """() => [...document.querySelectorAll('.dom-widget')].filter(e => e.firstElementChild?.querySelector('span'))
             .map(e => ({ text: e.textContent.trim(), client: e.firstElementChild.clientHeight,
                          scroll: e.firstElementChild.scrollHeight }))"""
    )


def status_box(page: Any) -> dict[str, float]:
    """The drawn status text's box: its visible height and the height its text needs."""
    return page.evaluate(
        """() => { const box = [...document.querySelectorAll('.dom-widget')]
             .find(e => /^\\d+ steps? in/.test(e.innerText.trim()));
           const scroller = box.firstElementChild;
           return {client: scroller.clientHeight, scroll: scroller.scrollHeight} }"""
    )


def screen_box(page: Any, node_types: list[str], margin: float = 16.0) -> dict[str, float]:
    """The part of the screen that shows the first node of each of ``node_types`` (title bars included), with
    ``margin`` around them, cut to the window."""
    return page.evaluate(
        """([types, title, margin]) => {
             const { scale, offset } = app.canvas.ds, r = app.canvas.canvas.getBoundingClientRect();
             const nodes = types.map(type => app.graph._nodes.find(n => n.type === type));
             const sx = x => r.left + (x + offset[0]) * scale, sy = y => r.top + (y + offset[1]) * scale;
             const x0 = Math.max(0, Math.min(...nodes.map(n => sx(n.pos[0]))) - margin);
             const y0 = Math.max(0, Math.min(...nodes.map(n => sy(n.pos[1] - title))) - margin);
             const x1 = Math.min(innerWidth, Math.max(...nodes.map(n => sx(n.pos[0] + n.size[0]))) + margin);
             const y1 = Math.min(innerHeight, Math.max(...nodes.map(n => sy(n.pos[1] + n.size[1]))) + margin);
             return { x: x0, y: y0, width: x1 - x0, height: y1 - y0 } }""",
        [node_types, TITLE_HEIGHT, margin],
    )


def overlapping_nodes(nodes: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """Pairs of nodes whose boxes (title bar included) overlap."""

    def box(n: dict[str, Any]) -> tuple[float, float, float, float]:
        (x, y), (w, h) = n["pos"], n["size"]
        return x, y - TITLE_HEIGHT, x + w, y + h

    pairs = []
    for i, a in enumerate(nodes):
        for b in nodes[i + 1 :]:
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = box(a), box(b)
            if ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1:
                pairs.append((a["id"], b["id"]))
    return pairs
