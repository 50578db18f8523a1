"""What a weights file holds, told from tensor names and shapes alone.

``describe_foreign`` recognises the files people pick by mistake (Wan variants DAX does not run - VACE, camera
control, S2V, HuMo, Animate, Phantom - the Wan VAE, the umt5 text encoder, CLIP vision, LoRAs); ``infer_spec`` reads
a Wan DiT's size and variant (T2V, I2V with or without CLIP features, FLF2V, TI2V) from its shapes;
``expected_shapes`` is what that spec must hold, taken from the model itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from pathlib import PurePath

import torch

from .spec import WAN22_LATENT_CHANNELS, WanSpec
from .wan import WanModel
from .weights_error import WeightsError

HEAD_DIM = 128  # every published Wan2.1 size: 1.3B is 1536 / 12 heads, 14B is 5120 / 40
NUM_HEADS_METADATA = "dax.num_heads"  # safetensors metadata key overriding dim // HEAD_DIM (tiny test models)
SUPPORTED = (
    "DAX runs Wan2.1 text-to-video (1.3B, 14B), image-to-video (I2V 14B, 480p and 720p) and first-last-frame "
    "(FLF2V 14B), Wan2.2 TI2V 5B and Wan2.2 T2V and I2V A14B models"
)
CLIP_EMBEDDING = "img_emb.proj.0.weight"  # the image embedding's first LayerNorm: [clip_dim]
FLF_POSITIONS = "img_emb.emb_pos"  # FLF2V's positional embedding of its image tokens: [1, tokens, clip_dim]

# (substring of a tensor name, what a file with such tensors is), checked in order (ComfyUI's own detection keys,
# and their diffusers names where diffusers has the model).
_WAN_VARIANTS = (
    ("vace_", "a Wan VACE model (it has vace_blocks.* / vace_patch_embedding tensors)"),
    ("control_adapter.", "a Wan camera-control model (it has control_adapter.* tensors)"),
    ("casual_audio_encoder.", "a Wan speech-to-video (S2V) model (it has casual_audio_encoder.* tensors)"),
    ("audio_proj.", "a Wan HuMo model (it has audio_proj.* tensors)"),
    ("face_adapter.", "a Wan Animate model (it has face_adapter.* tensors)"),
    ("motion_encoder.", "a Wan Animate model (it has motion_encoder.* tensors)"),
)
# Phantom (subject-to-video) has a text-to-video model's tensors: told by its file name only.
_NAMED_VARIANTS = (("phantom", "a Phantom (subject-to-video) Wan model, by its name"),)


def describe_variant_by_name(path: str) -> str | None:
    """Why a file whose name says it is a variant DAX does not run is refused; None otherwise."""
    base = PurePath(path).name.lower()
    for marker, what in _NAMED_VARIANTS:
        if marker in base:
            return f"looks like {what}, which DAX does not run; {SUPPORTED}"
    return None


def describe_foreign(names: Collection[str]) -> str | None:
    """What a file with these (prefix-stripped) names is and where it belongs; None for a Wan2.1 DiT DAX runs."""
    for marker, what in _WAN_VARIANTS:
        if any(marker in name for name in names):
            return f"looks like {what}, which DAX does not run; {SUPPORTED}"
    if any("lora" in name.lower() for name in names):
        return "looks like a LoRA (it has lora_* tensors): a LoRA is applied on top of a model, not loaded as one"
    if "shared.weight" in names or "token_embedding.weight" in names or _any_prefix(names, "encoder.block."):
        return "looks like a text encoder (T5 / umt5-xxl: shared.weight, encoder.block.*): load it as the text encoder"
    if _any_prefix(names, "vision_model.", "visual."):
        return "looks like a CLIP vision encoder (vision_model.* / visual.* tensors): load it as CLIP vision"
    if "decoder.middle.0.residual.0.gamma" in names or "encoder.conv1.weight" in names:
        return "looks like the Wan VAE (encoder.* / decoder.* convolution stacks): load it as the VAE"
    if _any_prefix(names, "encoder.") and _any_prefix(names, "decoder."):
        return "looks like a VAE (encoder.* / decoder.* tensors): load it as the VAE"
    return None


def _any_prefix(names: Collection[str], *prefixes: str) -> bool:
    return any(name.startswith(prefixes) for name in names)


def infer_spec(shapes: Mapping[str, tuple[int, ...]], *, num_heads: int | None = None, where: str) -> WanSpec:
    """The WanSpec of Wan-named parameter ``shapes``; ``where`` (the file) starts every error message.

    The variant: an image embedding (``img_emb``) makes an I2V model, its positional embedding (``emb_pos``) an
    FLF2V one; a patch embedding of noise + 4 mask + image-latent channels without an image embedding, an I2V model
    without CLIP features (``clip_dim`` 0: Wan2.2 I2V A14B; ComfyUI runs it as its WanModel with text-only
    cross-attention); none of these, a text-to-video model (TI2V for 48 latent channels).

    Attention heads leave no trace in the shapes: ``num_heads`` overrides, else dim // 128 (Wan's head size).
    """
    needed = ("patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight", "head.head.weight")
    needed += ("blocks.0.ffn.0.weight",)
    lacking = [name for name in needed if name not in shapes]
    if lacking:
        raise WeightsError(
            f"{where}: lacks {', '.join(lacking)}, needed to tell the model size; "
            "the file is incomplete or not a Wan2.1 DiT"
        )
    patch_weight = shapes["patch_embedding.weight"]  # [dim, in_dim, pt, ph, pw]
    if len(patch_weight) != 5:
        raise WeightsError(f"{where}: patch_embedding.weight has shape {list(patch_weight)}, expected 5 dimensions")
    dim, in_dim, patch_size = patch_weight[0], patch_weight[1], tuple(patch_weight[2:])
    out_dim = shapes["head.head.weight"][0] // max(1, math.prod(patch_size))
    variant = _variant_fields(shapes, in_dim, out_dim, where)
    blocks = {int(m.group(1)) for name in shapes if (m := re.match(r"blocks\.(\d+)\.", name))}
    if num_heads is None:
        if dim % HEAD_DIM:
            raise WeightsError(
                f"{where}: cannot tell the number of attention heads: dim {dim} is not a multiple of Wan's head "
                f"size {HEAD_DIM} and the file has no {NUM_HEADS_METADATA!r} metadata; write the file with that "
                "metadata (tiny models from `python -m dax_core tiny-model` have it)"
            )
        num_heads = dim // HEAD_DIM
    try:
        return WanSpec(
            dim=dim,
            num_layers=max(blocks) + 1,
            num_heads=num_heads,
            ffn_dim=shapes["blocks.0.ffn.0.weight"][0],
            text_dim=shapes["text_embedding.0.weight"][-1],
            freq_dim=shapes["time_embedding.0.weight"][-1],
            in_dim=in_dim,
            out_dim=out_dim,
            patch_size=patch_size,
            cross_attn_norm="blocks.0.norm3.weight" in shapes,
            **variant,
        )
    except ValueError as e:
        raise WeightsError(f"{where}: the tensor shapes describe no valid Wan2.1 model ({e})") from e


def _variant_fields(shapes: Mapping[str, tuple[int, ...]], in_dim: int, out_dim: int, where: str) -> dict:
    """The WanSpec fields of the variant the tensors tell. With a CLIP image embedding: Wan2.1 I2V, or FLF2V with
    its image positions. Without one: an image latent concatenated to the noise (noise, 4 mask channels, image
    latent) is Wan2.2 I2V A14B; a DiT that predicts the Wan2.2 VAE's 48 latent channels is Wan2.2 TI2V (ComfyUI's
    rule too: WAN22_T2V is the Wan model with ``out_dim`` 48); else text-to-video, Wan2.1 T2V or a Wan2.2 A14B
    expert, which shapes cannot tell apart (the user's model choice at Load does)."""
    if CLIP_EMBEDDING not in shapes:
        if in_dim == 2 * out_dim + 4:
            return {"model_type": "i2v", "clip_dim": 0}
        return {"model_type": "ti2v" if out_dim == WAN22_LATENT_CHANNELS else "t2v"}
    fields: dict = {"model_type": "i2v", "clip_dim": shapes[CLIP_EMBEDDING][0]}
    if FLF_POSITIONS in shapes:
        positions = shapes[FLF_POSITIONS]
        if len(positions) != 3:
            raise WeightsError(f"{where}: {FLF_POSITIONS} has shape {list(positions)}, expected [1, tokens, width]")
        fields |= {"model_type": "flf2v", "image_pos_tokens": positions[1]}
    return fields


def expected_shapes(spec: WanSpec) -> dict[str, tuple[int, ...]]:
    """Every parameter a model of ``spec`` has, with its shape (built on the meta device: free even for 14B)."""
    model = WanModel(spec, device=torch.device("meta"))
    return {name: tuple(p.shape) for name, p in model.state_dict().items()}
