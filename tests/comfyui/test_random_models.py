"""The random stand-in weights have exactly the parameters ComfyUI's own modules expect."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dax_core.demo.clip_vision import clip_vision_h_schema
from dax_core.demo.text_encoder import t5_base_schema
from dax_core.demo.vae import wan22_vae_schema, wan_vae_schema

pytestmark = pytest.mark.comfyui

# Builds the modules ComfyUI loads these files into (the Wan2.1 and Wan2.2 VAEs as comfy/sd.py configures them, the
# T5-base encoder of SA-T5, and CLIP ViT-H's vision tower as CLIPVisionLoader builds it), in a separate process so
# that this one never imports comfy.
_SCHEMAS = """
import json, comfy.cli_args
comfy.cli_args.args.cpu = True
import torch, comfy.ops, comfy.ldm.wan.vae, comfy.ldm.wan.vae2_2, comfy.text_encoders.t5, os
import comfy.text_encoders.sa_t5 as sa_t5, comfy.clip_model, comfy.clip_vision
ddconfig = {"dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
            "temperal_downsample": [False, True, True], "dropout": 0.0}
with torch.device("meta"):
    vae = comfy.ldm.wan.vae.WanVAE(**ddconfig)
    vae22 = comfy.ldm.wan.vae2_2.WanVAE(**{**ddconfig, "dim": 160, "z_dim": 48})
    config = os.path.join(os.path.dirname(sa_t5.__file__), "t5_config_base.json")
    t5 = comfy.text_encoders.t5.T5(json.load(open(config)), torch.float16, "meta", comfy.ops.manual_cast)
    h = os.path.join(os.path.dirname(comfy.clip_vision.__file__), "clip_vision_config_h.json")
    clip = comfy.clip_model.CLIPVisionModelProjection(json.load(open(h)), torch.float16, "meta", comfy.ops.manual_cast)
shapes = lambda m: {k: list(v.shape) for k, v in m.state_dict().items()}
print(json.dumps({"vae": shapes(vae), "vae22": shapes(vae22), "t5": shapes(t5), "clip_vision_h": shapes(clip)}))
"""


@pytest.fixture(scope="module")
def comfy_schemas(comfyui_dir: Path) -> dict[str, dict[str, list[int]]]:
    done = subprocess.run(
        [sys.executable, "-c", _SCHEMAS], cwd=comfyui_dir, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _as_lists(schema: dict[str, tuple[int, ...]]) -> dict[str, list[int]]:
    return {k: list(v) for k, v in schema.items()}


def test_wan_vae_schema_matches_comfyui(comfy_schemas: dict[str, dict[str, list[int]]]) -> None:
    assert _as_lists(wan_vae_schema()) == comfy_schemas["vae"]


def test_wan22_vae_schema_matches_comfyui(comfy_schemas: dict[str, dict[str, list[int]]]) -> None:
    assert _as_lists(wan22_vae_schema()) == comfy_schemas["vae22"]


def test_t5_base_schema_matches_comfyui(comfy_schemas: dict[str, dict[str, list[int]]]) -> None:
    assert _as_lists(t5_base_schema()) == comfy_schemas["t5"]


def test_clip_vision_h_schema_matches_comfyui(comfy_schemas: dict[str, dict[str, list[int]]]) -> None:
    assert _as_lists(clip_vision_h_schema()) == comfy_schemas["clip_vision_h"]
