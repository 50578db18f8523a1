"""Attention registry, SDPA numerics and layout, the log-sum-exp, missing backends, and the compile path (CPU)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dax_core.attention import (
    AttentionBackend,
    BackendUnavailable,
    BoundAttention,
    available_backends,
    backend_names,
    bind_attention,
    get_backend,
    lse_backend_names,
)
from dax_core.attention import exact as exact_module
from dax_core.attention.exact import exact_attention_lse
from dax_core.attention.registry import register
from tests.environment import installed
from tests.numerics import rel_error

BACKENDS = ["sdpa", "sdpa_cudnn", "sdpa_flash", "flash", "sage", "auto"]


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None):
    """Float64 attention written out: (out [B, S, H, D], lse [B, H, S])."""
    q, k, v = q.double(), k.double(), v.double()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    lse = torch.logsumexp(logits, dim=-1)
    out = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(logits, dim=-1), v)
    return out, lse


def qkv(b=2, s_q=37, s_k=23, h=3, d=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, s_q, h, d, generator=g).to(dtype)
    k = torch.randn(b, s_k, h, d, generator=g).to(dtype)
    v = torch.randn(b, s_k, h, d, generator=g).to(dtype)
    return q, k, v


# --- registry -----------------------------------------------------------------------------------------------------


def test_every_backend_is_registered_in_display_order():
    assert backend_names() == BACKENDS
    assert set(lse_backend_names()) == {"sdpa", "sdpa_cudnn", "sdpa_flash", "flash", "sage", "auto"}
    assert {"sdpa", "auto"} <= set(available_backends())


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(BackendUnavailable, match=r"unknown attention backend 'xformers'; choose one of sdpa, "):
        get_backend("xformers")


def test_registering_a_name_twice_is_an_error():
    with pytest.raises(ValueError, match="registered twice"):
        register(dataclasses.replace(get_backend("sdpa")))


def _toy_backend(check=lambda: None, options=None) -> AttentionBackend:
    def binder(device, dtype, opts):
        return BoundAttention("toy", f"toy {dict(opts)}", run=lambda q, k, v, s: q)

    return AttentionBackend("toy", "a test backend", check=check, binder=binder, options=options or {})


def test_availability_is_checked_once():
    calls = []

    def check():
        calls.append(1)
        return None

    toy = _toy_backend(check=check)
    for _ in range(3):
        toy.bind("cpu")
    assert calls == [1]


def test_options_are_validated_and_defaulted_at_bind():
    toy = _toy_backend(options={"mode": ("fast", "exact")})
    assert toy.bind("cpu").kernel == "toy {'mode': 'fast'}"
    assert toy.bind("cpu", mode="exact").kernel == "toy {'mode': 'exact'}"
    with pytest.raises(ValueError, match=r"toy option mode='sloppy' is not one of fast, exact"):
        toy.bind("cpu", mode="sloppy")
    with pytest.raises(ValueError, match=r"has no option 'speed' \(its options: mode\)"):
        toy.bind("cpu", speed="max")


def test_an_unavailable_backend_fails_at_bind_with_its_reason():
    toy = _toy_backend(check=lambda: "toylib is not installed: pip install toylib")
    with pytest.raises(BackendUnavailable, match="'toy' is not available: toylib is not installed: pip install toylib"):
        toy.bind("cpu")


# --- missing packages: errors with the install hint --------------------------------------------------------------


@pytest.mark.skipif(installed("sageattention"), reason="sageattention is installed here")
def test_missing_sageattention_says_how_to_install_it():
    with pytest.raises(BackendUnavailable) as err:
        bind_attention("sage", "cuda", torch.bfloat16)
    message = str(err.value)
    assert "sageattention is not installed" in message
    assert "SageAttention2" in message and "pip install sageattention==1.0.6" in message


@pytest.mark.skipif(installed("flash_attn") or installed("flash_attn_interface"), reason="flash-attn is installed")
def test_missing_flash_attn_says_how_to_install_it():
    with pytest.raises(BackendUnavailable, match=r"pip install flash-attn --no-build-isolation"):
        get_backend("flash")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
@pytest.mark.parametrize("name", ["sdpa_cudnn", "sdpa_flash"])
def test_pinned_sdpa_kernels_need_a_gpu(name):
    with pytest.raises(BackendUnavailable, match="needs a CUDA GPU; use sdpa"):
        get_backend(name)


def test_auto_on_the_cpu_is_sdpa():
    bound = bind_attention("auto", "cpu", torch.float32)
    assert bound.backend == "sdpa" and "chosen by auto" in bound.kernel
    q, k, v = qkv()
    torch.testing.assert_close(bound(q, k, v), bind_attention("sdpa", "cpu")(q, k, v), rtol=0, atol=0)


# --- SDPA numerics and the [B, S, H, D] contract ---------------------------------------------------------------------


@pytest.mark.parametrize("scale", [None, 0.3])
def test_sdpa_matches_float64_attention(scale):
    q, k, v = qkv()
    out = bind_attention("sdpa", "cpu", torch.float32)(q, k, v, scale)
    expected, _ = reference(q, k, v, scale)
    assert out.shape == q.shape and out.dtype == q.dtype
    # float32 math over 16-wide heads and 23 keys: ~1e-7 relative; a wrong scale or layout gives O(1)
    assert rel_error(out, expected) < 1e-5


def test_layout_is_batch_tokens_heads_dim():
    """Head h of the output depends on head h of q, k, v only, and token i on query token i only."""
    sdpa = bind_attention("sdpa", "cpu", torch.float32)
    q, k, v = qkv(b=1, s_q=5, s_k=7, h=4, d=8)
    out = sdpa(q, k, v)
    # A head alone runs the same float32 sums (1e-6: float32 rounding of unit values); reversed keys reorder the
    # softmax sum over 7 keys (a few ulp, ~1e-7 relative): 1e-5 still fails on any leak between heads or tokens.
    for h in range(4):
        alone = sdpa(q[:, :, h : h + 1], k[:, :, h : h + 1], v[:, :, h : h + 1])
        torch.testing.assert_close(out[:, :, h : h + 1], alone, rtol=1e-6, atol=1e-6)
    flipped = sdpa(q.flip(1), k, v)  # reversing the queries reverses the output tokens
    torch.testing.assert_close(flipped, out.flip(1), rtol=1e-6, atol=1e-6)
    shuffled = sdpa(q, k.flip(1), v.flip(1))  # attention is a set operation over the keys
    torch.testing.assert_close(shuffled, out, rtol=1e-5, atol=1e-6)


def test_bf16_sdpa_is_within_bf16_rounding_of_float64():
    q, k, v = qkv(s_q=64, s_k=64, d=64, dtype=torch.bfloat16)
    out = bind_attention("sdpa", "cpu", torch.bfloat16)(q, k, v)
    # bf16 has an 8-bit mantissa (2**-9 = 2e-3 relative rounding); the output itself is stored in bf16
    assert out.dtype == torch.bfloat16 and rel_error(out, reference(q, k, v)[0]) < 1e-2


# --- log-sum-exp ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [None, 0.7])
def test_sdpa_lse_matches_float64(scale):
    q, k, v = qkv()
    out, lse = bind_attention("sdpa", "cpu", torch.float32).with_lse(q, k, v, scale)
    expected_out, expected_lse = reference(q, k, v, scale)
    assert lse.dtype == torch.float32 and lse.shape == (2, 3, 37)
    # float32 logits: lse agrees to ~1e-6 absolute (it is O(log 23 + |logit|) ~ 5)
    torch.testing.assert_close(lse.double(), expected_lse, rtol=0, atol=1e-5)
    assert rel_error(out, expected_out) < 1e-5


def test_exact_attention_is_exact_across_query_chunks(monkeypatch):
    monkeypatch.setattr(exact_module, "_BLOCK_ELEMENTS", 2 * 3 * 23 * 4)  # 4 queries per chunk: 10 chunks
    q, k, v = qkv()
    out, lse = exact_attention_lse(q.double(), k.double(), v.double())
    expected_out, expected_lse = reference(q, k, v)
    # float64 throughout: agreement to rounding
    torch.testing.assert_close(out, expected_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse.double(), expected_lse, rtol=0, atol=1e-6)  # lse is returned in float32


def test_lse_merges_key_blocks_into_full_attention():
    """What ring attention does: attention over two key blocks, merged by their log-sum-exps, is attention over all."""
    sdpa = bind_attention("sdpa", "cpu", torch.float32)
    q, k, v = qkv(s_k=40)
    o1, l1 = sdpa.with_lse(q, k[:, :25], v[:, :25])
    o2, l2 = sdpa.with_lse(q, k[:, 25:], v[:, 25:])
    lse = torch.logaddexp(l1, l2)
    w1 = torch.exp(l1 - lse).transpose(1, 2).unsqueeze(-1)  # [B, S, H, 1]
    w2 = torch.exp(l2 - lse).transpose(1, 2).unsqueeze(-1)
    merged = o1 * w1 + o2 * w2
    expected_out, expected_lse = reference(q, k, v)
    # float32 partials and weights exp(l - lse): ~1e-7 relative each, as for one block; a wrong weight is O(1)
    assert rel_error(merged, expected_out) < 1e-5
    torch.testing.assert_close(lse.double(), expected_lse, rtol=0, atol=1e-5)


def test_a_kernel_without_lse_says_which_ones_have_it():
    toy = _toy_backend().bind("cpu")
    with pytest.raises(BackendUnavailable, match=r"does not return the log-sum-exp .* use one of sdpa, sdpa_cudnn"):
        toy.with_lse(*qkv())


def test_bad_shapes_are_named():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"takes q, k, v as \[batch, tokens, heads, head_dim\]"):
        bind_attention("sdpa", "cpu").with_lse(q.flatten(2), k, v)
    with pytest.raises(ValueError, match="must share batch and heads"):
        bind_attention("sdpa", "cpu").with_lse(q, k[:, :, :2], v[:, :, :2])


def test_the_sdpa_lse_op_honours_its_schema():
    """The custom op's real and fake implementations agree on what it returns (torch.library's own check)."""
    from dax_core.attention.sdpa import sdpa_with_lse

    q, k, v = qkv(s_q=9, s_k=5)
    for return_lse in (False, True):
        torch.library.opcheck(sdpa_with_lse, (q, k, v, None, return_lse))
    assert sdpa_with_lse(q, k, v, None, False)[1].numel() == 0
