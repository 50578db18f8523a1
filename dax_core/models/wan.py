"""The Wan DiT (Wan2.1 text-to-video, image-to-video, first-last-frame; Wan2.2 TI2V 5B and the A14B experts): a
compact implementation with the original (and ComfyUI) parameter names.

The variant is the spec's (``WanSpec.model_type``, ``clip_dim``): I2V and FLF2V models take 36 input channels (noise,
mask, image latent); those with CLIP features (``WanSpec.takes_clip``: Wan2.1 I2V, FLF2V) embed them (``img_emb``;
FLF2V adds a positional embedding over its two images' tokens) and attend to them beside the text in every
cross-attention (``k_img``, ``v_img``, ``norm_k_img``), the two attentions summed before the output projection;
Wan2.2 I2V A14B (``clip_dim`` 0) has neither, its cross-attention is the text's alone. TI2V models take a timestep
per latent frame (or per token).

Parameter names follow the original Wan2.1 checkpoints (``blocks.0.self_attn.q.weight`` ...), so
original and ComfyUI files load as they are; diffusers files are renamed on load (``naming.py``).
Float32 where Wan keeps it: time embedding, modulation, norms and rotary embedding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import SDPA_DEFAULT, AttentionFn
from . import ops
from .rope import rope_cos_sin
from .spec import WanSpec

if TYPE_CHECKING:
    from ..attention.schedule import SelfAttentionSchedule


class WanLinear(nn.Linear):
    """A linear layer whose stored weight dtype may differ from the compute dtype.

    A float8 weight (optionally with ComfyUI's per-tensor ``scale_weight``) is upcast to the input's
    dtype at every call; a weight already in the compute dtype is used as it is.
    """

    weight_scale: torch.Tensor | None

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.weight_scale = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if w.dtype != x.dtype:
            w = w.to(x.dtype)
        if self.weight_scale is not None:
            w = w * self.weight_scale.to(device=x.device, dtype=x.dtype)
        b = self.bias
        if b is not None and b.dtype != x.dtype:
            b = b.to(x.dtype)
        return F.linear(x, w, b)


class RMSNormWeight(nn.Module):
    """Holds the weight of Wan's RMSNorm over all heads; the arithmetic lives in ``ops``."""

    def __init__(self, dim: int, device=None, dtype=None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))


class LayerNormAffine(nn.Module):
    """Weight and bias of the affine LayerNorm before cross-attention (``norm3`` in Wan naming)."""

    def __init__(self, dim: int, device=None, dtype=None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(dim, device=device, dtype=dtype))


class WanAttention(nn.Module):
    """q/k/v/o projections with RMSNorm on q and k; rotary embedding for self-attention only.

    ``image``: a cross-attention that also attends to image tokens, through keys and values of their own (``k_img``
    with its RMSNorm ``norm_k_img``, ``v_img``) and the same queries (I2V, FLF2V).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        eps: float,
        kv_dim: int | None = None,
        device=None,
        dtype=None,
        image: bool = False,
    ):
        super().__init__()
        kv_dim = kv_dim or dim
        self.num_heads = num_heads
        self.eps = eps
        self.q = WanLinear(dim, dim, device=device, dtype=dtype)
        self.k = WanLinear(kv_dim, dim, device=device, dtype=dtype)
        self.v = WanLinear(kv_dim, dim, device=device, dtype=dtype)
        self.o = WanLinear(dim, dim, device=device, dtype=dtype)
        self.norm_q = RMSNormWeight(dim, device=device, dtype=dtype)
        self.norm_k = RMSNormWeight(dim, device=device, dtype=dtype)
        if image:
            self.k_img = WanLinear(dim, dim, device=device, dtype=dtype)
            self.v_img = WanLinear(dim, dim, device=device, dtype=dtype)
            self.norm_k_img = RMSNormWeight(dim, device=device, dtype=dtype)

    def query(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Self-attention queries [B, S, H, D]: projection, RMSNorm across heads, rotary embedding."""
        return ops.rms_norm_rope(self.q(x), self.norm_q.weight, *rope, self.num_heads, self.eps)

    def key(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return ops.rms_norm_rope(self.k(x), self.norm_k.weight, *rope, self.num_heads, self.eps)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return self.v(x).unflatten(-1, (self.num_heads, -1))

    def self_attention(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], attn: AttentionFn):
        if (prepared := getattr(attn, "prepared", None)) is not None:
            return self.o(self.prepared_attention(x, x, rope, prepared).flatten(2))
        out = attn(self.query(x, rope), self.key(x, rope), self.value(x))
        return self.o(out.flatten(2))

    def prepared_attention(
        self, x: torch.Tensor, context: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, prepared: Any
    ) -> torch.Tensor:
        """Attention whose kernel prepares its own inputs from the projections (``BoundAttention.prepared``), applying
        this layer's RMSNorm (and, with ``rope``, the rotary embedding) as it writes them: [B, S, H, D]."""
        h, eps = self.num_heads, self.eps
        q = prepared.query(self.q(x), self.norm_q.weight, rope, h, eps)
        k = prepared.key(self.k(context), self.norm_k.weight, rope, h, eps)
        return prepared.attend(q, k, prepared.value(self.v(context), h))

    def cross_attention(
        self, x: torch.Tensor, context: torch.Tensor, attn: AttentionFn, image: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attention of ``x`` to the text ``context`` [B, L, D] plus, with ``image`` [B, N, D] (an image
        cross-attention only), to the image tokens: the two outputs summed, then projected."""
        h, eps = self.num_heads, self.eps
        if (prepared := getattr(attn, "prepared", None)) is not None:
            q = prepared.query(self.q(x), self.norm_q.weight, None, h, eps)
            k = prepared.key(self.k(context), self.norm_k.weight, None, h, eps)
            out = prepared.attend(q, k, prepared.value(self.v(context), h))
            if image is not None:
                k_img = prepared.key(self.k_img(image), self.norm_k_img.weight, None, h, eps)
                out = out + prepared.attend(q, k_img, prepared.value(self.v_img(image), h))
            return self.o(out.flatten(2))
        q = ops.rms_norm(self.q(x), self.norm_q.weight, eps).unflatten(-1, (h, -1))
        k = ops.rms_norm(self.k(context), self.norm_k.weight, eps).unflatten(-1, (h, -1))
        v = self.v(context).unflatten(-1, (h, -1))
        out = attn(q, k, v)
        if image is not None:
            k_img = ops.rms_norm(self.k_img(image), self.norm_k_img.weight, eps).unflatten(-1, (h, -1))
            out = out + attn(q, k_img, self.v_img(image).unflatten(-1, (h, -1)))
        return self.o(out.flatten(2))


@dataclass(frozen=True)
class BlockInputQuant:
    """Per-row quantization dtypes of the block's three norm outputs, each for the 8-bit linears it feeds (None: a
    high-precision consumer). In eager CUDA runs the norm kernels then write the quantized input as well."""

    self_attn: torch.dtype | None = None  # q, k and v of self-attention
    cross_attn: torch.dtype | None = None  # the query of cross-attention
    ffn: torch.dtype | None = None  # ffn.0


NO_INPUT_QUANT = BlockInputQuant()


class WanBlock(nn.Module):
    def __init__(self, spec: WanSpec, device=None, dtype=None) -> None:
        super().__init__()
        d = spec.dim
        self.eps = spec.eps
        self.self_attn = WanAttention(d, spec.num_heads, spec.eps, device=device, dtype=dtype)
        self.norm3 = LayerNormAffine(d, device=device, dtype=dtype) if spec.cross_attn_norm else None
        self.cross_attn = WanAttention(d, spec.num_heads, spec.eps, device=device, dtype=dtype, image=spec.takes_clip)
        self.ffn = nn.Sequential(
            WanLinear(d, spec.ffn_dim, device=device, dtype=dtype),
            nn.GELU(approximate="tanh"),
            WanLinear(spec.ffn_dim, d, device=device, dtype=dtype),
        )
        self.modulation = nn.Parameter(torch.zeros(1, 6, d, device=device, dtype=torch.float32))
        self.input_quant: BlockInputQuant | None = None
        """Set by ``dax_core.quant`` on 8-bit models: what the norm kernels quantize their outputs to."""
        self.input_kernels: Any = None
        """Set by ``dax_core.quant`` (``input_kernels="dax"``): ``ops``' three norm sites returning the quantized rows
        alone where ``input_quant`` names a dtype (the block runs without sequence parallelism)."""

    def forward(
        self,
        x: torch.Tensor,
        e0: torch.Tensor,
        context: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        self_attn: AttentionFn,
        cross_attn: AttentionFn,
        parallel: SequenceParallelHooks | None = None,
        image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [B, S, D]; e0: [B, 6, D] float32 time projection, or [B, N, 6, D] for N equal groups of consecutive
        tokens (per latent frame; N = S: per token) (``Prepared.e0``); context: [B, L, D] embedded text; image:
        [B, N, D] embedded image tokens (I2V, FLF2V), else None.

        With ``parallel``, x holds this rank's slice of the tokens and self-attention runs across ranks.
        """
        g = TokenGroups(e0.shape[1] if e0.ndim == 4 and e0.shape[1] != x.shape[1] else None)
        shift, scale, gate, c_shift, c_scale, c_gate = _modulations(self.modulation, e0, g)
        iq = self.input_quant or NO_INPUT_QUANT
        own_kernels = self.input_kernels is not None and parallel is None and e0.ndim == 3
        norms = self.input_kernels if own_kernels else ops
        xn = g.flat(norms.modulated_layer_norm(g.split(x), shift, scale, self.eps, iq.self_attn))
        if parallel is None:
            y = self.self_attn.self_attention(xn, rope, self_attn)
        else:
            y = parallel.self_attention(self.self_attn, xn, rope, self_attn)
        if self.norm3 is not None:
            n3 = self.norm3
            x, xn = norms.gated_residual_layer_norm(
                g.split(x), g.split(y), gate, n3.weight, n3.bias, self.eps, iq.cross_attn
            )
            x, xn = g.flat(x), g.flat(xn)
        else:
            x = xn = g.flat(ops.gated_residual(g.split(x), g.split(y), gate))
        y = self.cross_attn.cross_attention(xn, context, cross_attn, image)
        x, xn = norms.add_modulated_layer_norm(g.split(x), g.split(y), c_shift, c_scale, self.eps, iq.ffn)
        x, xn = g.flat(x), g.flat(xn)
        return g.flat(ops.gated_residual(g.split(x), g.split(self.ffn(xn)), c_gate))


@dataclass(frozen=True)
class TokenGroups:
    """A modulation per group of consecutive tokens (Wan2.2 TI2V's timestep per latent frame): the activations
    [B, S, D] are viewed as [B, groups, S / groups, D] for the element-wise work, so that each group's [B, groups, 1,
    D] modulation broadcasts over its tokens without being repeated per token. ``groups`` None: no grouping."""

    groups: int | None

    def split(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.groups is None else x.unflatten(1, (self.groups, -1))

    def flat(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.groups is None else x.flatten(1, 2)


def _modulations(modulation: torch.Tensor, e: torch.Tensor, groups: TokenGroups) -> tuple[torch.Tensor, ...]:
    """A block's six (the head's two) modulations from its [1, K, D] parameter and the time projection: [B, 1, D]
    each for one per batch row ``e`` [B, K, D]; for ``e`` [B, N, K, D], [B, N, D] per token, or [B, N, 1, D] per
    group of tokens (``groups``)."""
    if e.ndim == 3:
        return (modulation.float() + e).chunk(modulation.shape[1], dim=1)
    mods = (modulation.float().unsqueeze(0) + e).unbind(2)
    return mods if groups.groups is None else tuple(m.unsqueeze(2) for m in mods)


class WanHead(nn.Module):
    def __init__(self, spec: WanSpec, device=None, dtype=None) -> None:
        super().__init__()
        self.eps = spec.eps
        out = spec.out_dim * math.prod(spec.patch_size)
        self.head = WanLinear(spec.dim, out, device=device, dtype=dtype)
        self.modulation = nn.Parameter(torch.zeros(1, 2, spec.dim, device=device, dtype=torch.float32))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x: [B, S, D]; e: [B, D] float32 time embedding, or [B, N, D] per group of consecutive tokens (N = S: per
        token)."""
        g = TokenGroups(e.shape[1] if e.ndim == 3 and e.shape[1] != x.shape[1] else None)
        shift, scale = _modulations(self.modulation, e.unsqueeze(-2), g)
        return self.head(g.flat(ops.modulated_layer_norm(g.split(x), shift, scale, self.eps)))


class ImageEmbedding(nn.Module):
    """CLIP-vision features [B, N, clip_dim] -> image tokens [B, N, dim]: LayerNorm, Linear, GELU, Linear, LayerNorm
    (``img_emb.proj.0`` .. ``.4``), the norms in float32; FLF2V first adds ``emb_pos``, a learned embedding of each of
    its two images' token positions (the features of both images, concatenated along the tokens)."""

    def __init__(self, clip_dim: int, dim: int, pos_tokens: int = 0, device=None, dtype=None) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.LayerNorm(clip_dim, device=device, dtype=dtype),
            WanLinear(clip_dim, clip_dim, device=device, dtype=dtype),
            nn.GELU(),
            WanLinear(clip_dim, dim, device=device, dtype=dtype),
            nn.LayerNorm(dim, device=device, dtype=dtype),
        )
        self.emb_pos = (
            nn.Parameter(torch.zeros(1, pos_tokens, clip_dim, device=device, dtype=dtype)) if pos_tokens else None
        )

    def forward(self, features: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        x = features.float()
        if self.emb_pos is not None:  # as the original code: at most as many tokens as there are positions
            x = x[:, : self.emb_pos.shape[1]] + self.emb_pos[:, : x.shape[1]].float()
        norm_in, fc1, act, fc2, norm_out = self.proj
        x = F.layer_norm(x, norm_in.normalized_shape, norm_in.weight.float(), norm_in.bias.float(), norm_in.eps)
        x = fc2(act(fc1(x.to(dtype))))
        x = F.layer_norm(
            x.float(), norm_out.normalized_shape, norm_out.weight.float(), norm_out.bias.float(), norm_out.eps
        )
        return x.to(dtype)


def sinusoidal_embedding(dim: int, timesteps: torch.Tensor) -> torch.Tensor:
    """Wan's time embedding: [cos, sin] of t * 10000^(-i/half), computed in float64, returned float32."""
    half = dim // 2
    t = timesteps.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(t, freqs)
    return torch.cat([angles.cos(), angles.sin()], dim=1).float()


def timesteps_of(t: torch.Tensor, batch: int, patch: Sequence[int], latent_size: Sequence[int]) -> torch.Tensor:
    """The model's timesteps for a latent of ``batch`` rows: [B] (one per row), or [B, N] for N equal groups of
    consecutive tokens (N = the latent's frames: ComfyUI's WAN22 timestep per frame; or one per token).

    Raises ValueError, saying what fits, for any other shape.
    """
    if t.numel() == 1:
        return t.reshape(-1).expand(batch)
    if t.ndim <= 1 or (t.ndim == 2 and t.shape[1] == 1):
        if t.numel() != batch:
            raise ValueError(f"{t.numel()} timesteps for a batch of {batch}: give one per batch row")
        return t.reshape(-1)
    frames = latent_size[0] // patch[0]
    tokens = frames * (latent_size[1] // patch[1]) * (latent_size[2] // patch[2])
    if t.ndim != 2 or t.shape[0] != batch or t.shape[1] not in (frames, tokens):
        raise ValueError(
            f"timesteps of shape {tuple(t.shape)} do not fit a batch of {batch} with {frames} frames and {tokens} "
            f"tokens: give [{batch}], [{batch}, {frames}] (per frame) or [{batch}, {tokens}] (per token)"
        )
    return t


def per_token(rows: torch.Tensor, tokens: int) -> torch.Tensor:
    """[B, N, ...] values of N equal groups of consecutive tokens -> [B, tokens, ...], one row per token."""
    groups = rows.shape[1]
    return rows if groups == tokens else rows.repeat_interleave(tokens // groups, dim=1)


def _linear_f32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    b = layer.bias.float() if layer.bias is not None else None
    w = layer.weight.float()
    scale = getattr(layer, "weight_scale", None)
    if scale is not None:
        w = w * scale.float()
    return F.linear(x.float(), w, b)


@dataclass
class Prepared:
    """Everything the block stack needs for one forward; produced by ``WanModel.prepare``."""

    tokens: torch.Tensor  # [B, S, D] in the compute dtype (this rank's batch and tokens when sequence-parallel)
    e: torch.Tensor  # [B, D] float32 time embedding (for the head); [B, N, D] with N timesteps per row (see e0)
    e0: torch.Tensor  # [B, 6, D] float32 time projection (for the blocks); [B, N, 6, D] with a timestep per group
    # of consecutive tokens (N latent frames; N = S: per token; sequence-parallel: per token, this rank's slice)
    context: torch.Tensor  # [B, L, D] embedded text
    image: torch.Tensor | None  # [B, N, D] embedded image tokens (I2V, FLF2V), else None
    rope: tuple[torch.Tensor, torch.Tensor]  # cos, sin [S, head_dim/2] for the tokens above
    grid: tuple[int, int, int]  # (frames, height, width) in patches, of the whole video
    out_shape: tuple[int, ...]  # [B, C, F, H, W] of the input latent

    def select(self, rows: slice | torch.Tensor) -> Prepared:
        """The same inputs for some batch rows only (a step cache runs the blocks for the rows that need them)."""
        tokens = self.tokens[rows]
        return replace(
            self,
            tokens=tokens,
            e=self.e[rows],
            e0=self.e0[rows],
            context=self.context[rows],
            image=None if self.image is None else self.image[rows],
            out_shape=(tokens.shape[0], *self.out_shape[1:]),
        )


class SequenceParallelHooks(Protocol):
    """What a sequence-parallel plan (``dax_core.parallel``) does at the model's four seams: take this rank's
    guidance branch, take its slice of the video tokens, run self-attention across ranks, gather the output."""

    def split_batch(
        self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def split_rows(self, rows: torch.Tensor, batch: int) -> torch.Tensor: ...

    def shard_tokens(
        self, tokens: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], grid: tuple[int, int, int]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]: ...

    def self_attention(
        self, attn: WanAttention, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], kernel: AttentionFn
    ) -> torch.Tensor: ...

    def shard_per_token(self, rows: torch.Tensor) -> torch.Tensor: ...

    def gather_tokens(self, x: torch.Tensor) -> torch.Tensor: ...


class BlockStackCache(Protocol):
    """What the model asks of a step cache (``dax_core.cache.StepCache`` implements it): the block stack's output
    for ``p``, computed or reused; ``branches[i]`` names the stream of batch row i."""

    def run_blocks(self, model: WanModel, p: Prepared, branches: Sequence[str]) -> torch.Tensor: ...


class WanModel(nn.Module):
    """The Wan diffusion transformer of ``spec``'s variant (T2V, I2V, FLF2V, TI2V).

    ``forward(x, t, context)`` takes the latent [B, in_dim, F, H, W] (I2V / FLF2V: noise, mask and image latent
    concatenated along the channels), the timestep [B] on Wan's 0..1000 scale (or [B, F] per latent frame, or
    [B, tokens] per token: Wan2.2 TI2V) and the text [B, L, text_dim], plus ``clip_fea`` for image models; it returns
    the flow (velocity) prediction [B, out_dim, F, H, W].
    A ``step_cache`` (TeaCache...), when set, decides between ``prepare`` and ``run_blocks`` whether the block
    stack runs; ``branches`` then names the stream (e.g. CFG's "cond" / "uncond") of each batch row.
    """

    def __init__(self, spec: WanSpec, device=None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.spec = spec
        d = spec.dim
        self.patch_embedding = nn.Conv3d(
            spec.in_dim, d, kernel_size=spec.patch_size, stride=spec.patch_size, device=device, dtype=torch.float32
        )
        self.text_embedding = nn.Sequential(
            WanLinear(spec.text_dim, d, device=device, dtype=dtype),
            nn.GELU(approximate="tanh"),
            WanLinear(d, d, device=device, dtype=dtype),
        )
        self.time_embedding = nn.Sequential(
            WanLinear(spec.freq_dim, d, device=device, dtype=dtype),
            nn.SiLU(),
            WanLinear(d, d, device=device, dtype=dtype),
        )
        self.time_projection = nn.Sequential(nn.SiLU(), WanLinear(d, 6 * d, device=device, dtype=dtype))
        self.img_emb = (
            ImageEmbedding(spec.clip_dim, d, spec.image_pos_tokens, device=device, dtype=dtype)
            if spec.takes_clip
            else None
        )
        self.blocks = nn.ModuleList(WanBlock(spec, device=device, dtype=dtype) for _ in range(spec.num_layers))
        self.head = WanHead(spec, device=device, dtype=dtype)
        self.compute_dtype = dtype or torch.float32
        self.self_attn_fn: AttentionFn = SDPA_DEFAULT
        self.cross_attn_fn: AttentionFn = SDPA_DEFAULT
        self._rope_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.compiled: Any = None  # dax_core.compile's CompiledBlocks (config, shapes met) while compiled
        self.block_graphs: Any = None  # dax_core.compile's BlockGraphs while the block stack runs as CUDA graphs
        self.step_cache: BlockStackCache | None = None
        """Set by ``dax_core.cache`` (TeaCache, MagCache) on this instance only."""
        self.self_attention_schedule: SelfAttentionSchedule | None = None
        """Per-layer self-attention kernels (radial attention), set by ``dax_core.attention.radial_config``."""
        self.sequence_parallel: SequenceParallelHooks | None = None
        """Set by ``dax_core.parallel.enable_sequence_parallel`` on this instance only."""
        self.block_hook: Callable[[int, int], None] | None = None
        """Called with (block index, blocks) after every transformer block, e.g. by the engine for a run that can
        stop mid-step (it may raise to stop there); None: nothing between blocks. A block stack replayed as a CUDA
        graph (one GPU only) runs no Python between blocks, and so no hook."""

    def set_attention(self, self_attn: AttentionFn, cross_attn: AttentionFn | None = None) -> None:
        """Attention kernels for this model instance only (cross-attention defaults to the same)."""
        self.self_attn_fn = self_attn
        self.cross_attn_fn = cross_attn or self_attn

    def rope(self, grid: tuple[int, int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (grid, str(device))
        if key not in self._rope_cache:
            self._rope_cache.clear()  # one resolution at a time: keep memory bounded
            self._rope_cache[key] = rope_cos_sin(self.spec, grid, device)
        return self._rope_cache[key]

    def prepare(
        self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, clip_fea: torch.Tensor | None = None
    ) -> Prepared:
        spec = self.spec
        spec.check_latent(x.shape)
        spec.check_text(context.shape)
        spec.check_image_features(None if clip_fea is None else clip_fea.shape, x.shape[0])
        out_shape = tuple(x.shape)
        t = timesteps_of(t, x.shape[0], spec.patch_size, x.shape[2:])
        sp = self.sequence_parallel
        if sp is not None:
            batch = x.shape[0]
            x, t, context = sp.split_batch(x, t, context)
            if clip_fea is not None:
                clip_fea = sp.split_rows(clip_fea, batch)
        tokens = self.patch_embedding(x.to(self.patch_embedding.weight.dtype))
        grid = tuple(tokens.shape[2:])
        # One copy (in bf16, the cast's) into row-major [B, S, D], the layout of every block's output on CUDA. A
        # transposed view of the patch embedding costs the fused kernels of block 1 a copy each and, under
        # torch.compile with dynamic shapes, block 1 a graph of its own (a view is guarded on its base).
        contiguous = torch.contiguous_format
        tokens = tokens.flatten(2).transpose(1, 2).to(self.compute_dtype, memory_format=contiguous, copy=True)
        rope = self.rope(grid, x.device)
        if sp is not None:
            tokens, rope = sp.shard_tokens(tokens, rope, grid)

        e = _linear_f32(
            self.time_embedding[2],
            F.silu(_linear_f32(self.time_embedding[0], sinusoidal_embedding(spec.freq_dim, t.reshape(-1)))),
        )
        e0 = _linear_f32(self.time_projection[1], F.silu(e)).unflatten(-1, (6, spec.dim))
        if t.ndim == 2:  # a timestep per group of consecutive tokens (per latent frame)
            e, e0 = e.unflatten(0, t.shape), e0.unflatten(0, t.shape)
            if sp is not None:  # a rank's slice of the tokens cuts groups: one row per token, sliced alike
                e, e0 = (sp.shard_per_token(per_token(v, math.prod(grid))) for v in (e, e0))
        ctx = self.text_embedding(context.to(self.compute_dtype))
        image = None if self.img_emb is None else self.img_emb(clip_fea, self.compute_dtype)
        if image is not None and image.shape[0] != tokens.shape[0]:
            image = image.expand(tokens.shape[0], -1, -1)
        return Prepared(tokens, e, e0, ctx, image, rope, grid, out_shape)

    def run_blocks(self, p: Prepared) -> torch.Tensor:
        """The block stack on ``p.tokens`` (left unchanged: step caches take residuals against it), replayed from a
        CUDA graph while ``block_graphs`` is set."""
        if self.block_graphs is not None:
            return self.block_graphs.run(p)
        return self.run_block_stack(p)

    def run_block_stack(self, p: Prepared) -> torch.Tensor:
        x = p.tokens
        if self.compiled is not None:
            self.compiled.note_shapes(x, p.context, p.image)  # logs when a new shape makes the blocks compile once more
        schedule, n, hook = self.self_attention_schedule, len(self.blocks), self.block_hook
        kernels = [self.self_attn_fn] * n if schedule is None else schedule.layer_kernels(p.grid, n, self.self_attn_fn)
        for index, (block, self_attn) in enumerate(zip(self.blocks, kernels, strict=True)):
            x = block(x, p.e0, p.context, p.rope, self_attn, self.cross_attn_fn, self.sequence_parallel, p.image)
            if hook is not None:
                hook(index, n)
        return x

    def finish(self, x: torch.Tensor, p: Prepared) -> torch.Tensor:
        out = self.head(x, p.e)
        if self.sequence_parallel is not None:
            out = self.sequence_parallel.gather_tokens(out)
        b, c = p.out_shape[0], self.spec.out_dim
        f, h, w = p.grid
        pt, ph, pw = self.spec.patch_size
        out = out.view(b, f, h, w, pt, ph, pw, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.reshape(b, c, f * pt, h * ph, w * pw)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        branches: Sequence[str] | None = None,
        clip_fea: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``clip_fea``: CLIP-vision features [B or 1, N, clip_dim] (penultimate hidden states; FLF2V: both images'
        tokens), which a model with CLIP features (Wan2.1 I2V, FLF2V) requires and any other refuses."""
        p = self.prepare(x, t, context, clip_fea)
        if self.step_cache is None:
            return self.finish(self.run_blocks(p), p)
        if branches is None:  # unnamed rows are one stream
            branches = ("default",) * x.shape[0]
        return self.finish(self.step_cache.run_blocks(self, p, branches), p)
