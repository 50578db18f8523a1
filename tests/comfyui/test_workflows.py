"""Every shipped workflow: the API twin passes ComfyUI's validation, and the UI file converts to exactly that twin."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from dax_core.cache.coefficients import RECOMMENDED_THRESHOLDS
from dax_core.demo.comfy_server import ComfyServer, PromptFailed, PromptRejected
from dax_core.demo.run import LOADERS, WORKFLOWS, load_workflow, node_of, shipped_workflows

pytestmark = pytest.mark.comfyui

API_WORKFLOWS = shipped_workflows()
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
NODE_TITLE_HEIGHT = 30  # LiteGraph draws a node's title bar above its ``pos``
# the published model (TeaCache's naming) of each DiT file the shipped workflows load
PUBLISHED_MODEL = {
    "wan2.1_t2v_1.3B_bf16.safetensors": "wan2.1-t2v-1.3b",
    "wan2.1_t2v_14B_bf16.safetensors": "wan2.1-t2v-14b",
    "wan2.1_i2v_480p_14B_bf16.safetensors": "wan2.1-i2v-14b",
    "wan2.1_flf2v_720p_14B_fp16.safetensors": "wan2.1-flf2v-14b",
}

each_workflow = pytest.mark.parametrize("workflow", API_WORKFLOWS, ids=[path.stem for path in API_WORKFLOWS])


def ui_twin(api_workflow: Path) -> Path:
    return WORKFLOWS / api_workflow.name


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


def test_every_ui_workflow_has_an_api_twin() -> None:
    # the template browser lists every JSON file at the top of workflows/: only UI-format ones may be there
    ui_files = set(WORKFLOWS.glob("*.json"))
    assert ui_files == {ui_twin(path) for path in API_WORKFLOWS}
    assert {path.stem for path in API_WORKFLOWS} >= {
        "Wan2.1 text-to-video 1.3B (DAX)",
        "Wan2.1 text-to-video 14B, all accelerations (DAX)",
        "Wan2.1 image-to-video 14B 480p (DAX)",
        "Wan2.1 first-last-frame 14B (DAX)",
        "Wan2.2 text-to-video A14B, two experts (DAX)",
        "Wan2.2 image-to-video A14B, two experts (DAX)",
        "Wan2.2 text-image-to-video 5B (DAX)",
    }
    assert {p.name for p in WORKFLOWS.iterdir()} <= {"api"} | {
        f"{p.stem}{ext}" for p in ui_files for ext in (".json", ".jpg")
    }


def _box(node: dict[str, Any]) -> tuple[float, float, float, float]:
    (x, y), (w, h) = node["pos"], node["size"]
    return x, y - NODE_TITLE_HEIGHT, x + w, y + h


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@each_workflow
def test_ui_workflow_is_well_formed(workflow: Path) -> None:
    ui = json.loads(ui_twin(workflow).read_text(encoding="utf-8"))
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


@each_workflow
def test_ui_workflow_layout_is_legible(workflow: Path) -> None:
    ui = json.loads(ui_twin(workflow).read_text(encoding="utf-8"))
    boxes = {node["id"]: _box(node) for node in ui["nodes"]}
    for (a, box_a), (b, box_b) in itertools.combinations(boxes.items(), 2):
        assert not _overlap(box_a, box_b), f"nodes {a} and {b} overlap"
    groups = {}
    for group in ui["groups"]:
        x, y, w, h = group["bounding"]
        groups[group["title"]] = (x, y, x + w, y + h)
    for (a, box_a), (b, box_b) in itertools.combinations(groups.items(), 2):
        assert not _overlap(box_a, box_b), f"groups {a!r} and {b!r} overlap"
    for title, group in groups.items():
        members = [node_id for node_id, box in boxes.items() if _overlap(box, group)]
        assert members, f"group {title!r} holds no node"
        for node_id in members:
            x0, y0, x1, y1 = boxes[node_id]
            inside = group[0] <= x0 and group[1] <= y0 and x1 <= group[2] and y1 <= group[3]
            assert inside, f"node {node_id} straddles the border of group {title!r}"


def test_teacache_thresholds_are_published_settings_for_the_model() -> None:
    checked = 0
    for workflow in API_WORKFLOWS:
        prompt = load_workflow(workflow)
        for node in prompt.values():
            if node["class_type"] == "DaxTeacache":
                model = PUBLISHED_MODEL[node_of(prompt, "DaxLoadWan")["inputs"]["model_name"]]
                inputs = node["inputs"]
                assert inputs["coefficients"] == "auto", f"{workflow.name}: the loaded model's own polynomial"
                low, high = RECOMMENDED_THRESHOLDS[inputs["mode"]][model]
                assert low <= inputs["threshold"] <= high, f"{workflow.name}: {model}, {inputs['mode']}: {low}-{high}"
                checked += 1
    assert checked, "no shipped workflow has a TeaCache node"


@each_workflow
def test_ui_and_api_twins_agree(comfy_server: ComfyServer, workflow: Path) -> None:
    ui = json.loads(ui_twin(workflow).read_text(encoding="utf-8"))
    api = load_workflow(workflow)
    assert ui_to_api(ui, comfy_server.object_info()) == {
        node_id: {"class_type": node["class_type"], "inputs": node["inputs"]} for node_id, node in api.items()
    }
    titles = {str(node["id"]): node.get("title") for node in ui["nodes"]}
    assert titles == {node_id: node["_meta"]["title"] for node_id, node in api.items()}


@each_workflow
def test_shipped_workflow_passes_validation(comfy_server: ComfyServer, workflow: Path) -> None:
    # POST /prompt validates the whole graph (types, links, value ranges, file lists) before queueing it.
    prompt_id = comfy_server.queue_prompt(load_workflow(workflow))
    # The files under the workflow's names are empty placeholders, so running stops at the first loader.
    with pytest.raises(PromptFailed) as failed:
        comfy_server.wait_for(prompt_id, timeout=120)
    assert failed.value.node_type in LOADERS


@each_workflow
def test_unknown_model_file_is_rejected_with_node_errors(comfy_server: ComfyServer, workflow: Path) -> None:
    prompt = load_workflow(workflow)
    loader_id = next(k for k, node in prompt.items() if node["class_type"] == "DaxLoadWan")
    prompt[loader_id]["inputs"]["model_name"] = "no_such_model.safetensors"
    with pytest.raises(PromptRejected) as rejected:
        comfy_server.queue_prompt(prompt)
    assert set(rejected.value.node_errors) == {loader_id}
    assert rejected.value.node_errors[loader_id]["class_type"] == "DaxLoadWan"
    assert "no_such_model.safetensors" in str(rejected.value)
