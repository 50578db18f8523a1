"""Parameter names: the original Wan2.1 / ComfyUI naming (ours) and diffusers' ``WanTransformer3DModel`` naming."""

from __future__ import annotations

import re
from collections.abc import Collection

COMFY_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
NAMINGS = ("wan", "diffusers")

# Names only one naming has: enough to tell the two apart from a file's keys.
_WAN_ONLY = ("head.modulation", "blocks.0.self_attn.q.weight", "text_embedding.0.weight")
_DIFFUSERS_ONLY = ("scale_shift_table", "blocks.0.attn1.to_q.weight", "condition_embedder.time_proj.weight")

# diffusers name -> Wan name, applied to the part after "blocks.N." or to top-level names.
_DIFFUSERS_BLOCK = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn1.norm_q": "self_attn.norm_q",
    "attn1.norm_k": "self_attn.norm_k",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "attn2.norm_q": "cross_attn.norm_q",
    "attn2.norm_k": "cross_attn.norm_k",
    "attn2.add_k_proj": "cross_attn.k_img",  # the image cross-attention (I2V, FLF2V)
    "attn2.add_v_proj": "cross_attn.v_img",
    "attn2.norm_added_k": "cross_attn.norm_k_img",
    "norm2": "norm3",  # the affine LayerNorm before cross-attention
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
    "scale_shift_table": "modulation",
}
_DIFFUSERS_TOP = {
    "patch_embedding": "patch_embedding",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "proj_out": "head.head",
    "condition_embedder.image_embedder.norm1": "img_emb.proj.0",  # the image embedding (I2V, FLF2V)
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "condition_embedder.image_embedder.norm2": "img_emb.proj.4",
    "condition_embedder.image_embedder.pos_embed": "img_emb.emb_pos",
    "scale_shift_table": "head.modulation",
}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _split_leaf(name: str) -> tuple[str, str]:
    """'a.b.weight' -> ('a.b', 'weight'); a bare parameter name -> (name, '')."""
    for leaf in (".weight", ".bias", ".scale_weight", ".scale_input"):
        if name.endswith(leaf):
            return name[: -len(leaf)], leaf
    return name, ""


def diffusers_to_wan(name: str) -> str:
    """Rename one diffusers parameter to Wan naming; raises KeyError for names with no Wan counterpart."""
    m = _BLOCK_RE.match(name)
    if m:
        module, leaf = _split_leaf(m.group(2))
        return f"blocks.{m.group(1)}.{_DIFFUSERS_BLOCK[module]}{leaf}"
    module, leaf = _split_leaf(name)
    return f"{_DIFFUSERS_TOP[module]}{leaf}"


def wan_to_diffusers(name: str) -> str:
    """Rename one Wan parameter to diffusers naming (the inverse of ``diffusers_to_wan``)."""
    m = _BLOCK_RE.match(name)
    if m:
        module, leaf = _split_leaf(m.group(2))
        inverse = {v: k for k, v in _DIFFUSERS_BLOCK.items()}
        return f"blocks.{m.group(1)}.{inverse[module]}{leaf}"
    module, leaf = _split_leaf(name)
    inverse = {v: k for k, v in _DIFFUSERS_TOP.items()}
    return f"{inverse[module]}{leaf}"


def strip_comfy_prefix(name: str) -> str:
    for prefix in COMFY_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def detect_naming(names: Collection[str]) -> str | None:
    """'wan' or 'diffusers' for a set of (prefix-stripped) tensor names; None when it is neither."""
    wan = sum(name in names for name in _WAN_ONLY)
    diffusers = sum(name in names for name in _DIFFUSERS_ONLY)
    if wan == diffusers == 0:
        return None
    return "wan" if wan >= diffusers else "diffusers"


def to_wan_name(name: str, naming: str) -> str | None:
    """The Wan name of one tensor name in ``naming`` (ComfyUI prefix stripped); None when it has no Wan counterpart."""
    name = strip_comfy_prefix(name)
    if naming == "wan":
        return name
    if naming != "diffusers":
        raise ValueError(f"unknown naming {naming!r}; expected one of {NAMINGS}")
    try:
        return diffusers_to_wan(name)
    except KeyError:
        return None
