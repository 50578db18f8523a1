"""Attention with log-sum-exp and the merge ring attention relies on, against float64 softmax."""

from __future__ import annotations

import pytest
import torch

from dax_core.parallel import attention_with_lse, math_attention_with_lse
from dax_core.parallel.lse_attention import merge_partial
from dax_core.parallel.ulysses import head_chunks


def _qkv(seed: int, b=2, sq=37, sk=29, h=3, d=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, s, h, d, generator=g).to(dtype) for s in (sq, sk, sk))


def _reference(q, k, v):
    """Plain float64 softmax attention: out [B, S, H, D], lse [B, H, S]."""
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    return (scores.softmax(-1) @ v).transpose(1, 2), torch.logsumexp(scores, -1)


def test_math_attention_matches_float64_softmax():
    q, k, v = _qkv(0)
    out, lse = math_attention_with_lse(q, k, v)
    ref_out, ref_lse = _reference(q, k, v)
    assert out.dtype == torch.float32 and lse.dtype == torch.float32
    assert lse.shape == (2, 3, 37)
    # float32 accumulation over 29 keys: ~1e-7 relative; a missing scale or a transposed head gives O(1)
    torch.testing.assert_close(out.double(), ref_out, rtol=0, atol=1e-5)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=0, atol=1e-5)


def test_math_attention_in_float64_is_exact_and_blocked_over_queries(monkeypatch):
    import dax_core.parallel.lse_attention as lse_attention

    monkeypatch.setattr(lse_attention, "_MATH_SCORE_ELEMENTS", 3 * 29 * 5)  # 5 queries per block
    q, k, v = _qkv(1, b=1, dtype=torch.float64)
    out, lse = math_attention_with_lse(q, k, v)
    ref_out, ref_lse = _reference(q, k, v)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(lse, ref_lse, rtol=0, atol=1e-12)


def test_merging_partials_over_key_chunks_equals_attention_over_all_keys():
    q, k, v = _qkv(2, sk=40, dtype=torch.float64)
    acc = acc_lse = None
    for chunk in ((0, 7), (7, 8), (8, 40)):  # uneven chunks, one of a single key
        out, lse = math_attention_with_lse(q, k[:, slice(*chunk)], v[:, slice(*chunk)])
        acc, acc_lse = merge_partial(acc, acc_lse, out, lse)
    ref_out, ref_lse = _reference(q, k, v)
    torch.testing.assert_close(acc, ref_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(acc_lse.squeeze(-1).transpose(1, 2), ref_lse, rtol=0, atol=1e-12)


def test_cpu_dispatch_is_the_math_kernel():
    q, k, v = _qkv(3, dtype=torch.bfloat16)
    out, lse = attention_with_lse(q, k, v)
    math_out, math_lse = math_attention_with_lse(q, k, v)
    assert torch.equal(out, math_out) and torch.equal(lse, math_lse)  # the exact-math kernel, not another
    ref_out, ref_lse = _reference(q, k, v)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    # float32 math on bf16 inputs, rounded once to bf16 (2^-8 relative)
    torch.testing.assert_close(out.double(), ref_out, rtol=0, atol=1e-2)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=0, atol=1e-2)


@pytest.mark.parametrize(
    ("heads", "batch", "chunks"),
    [(20, 2, 2), (20, 1, 4), (6, 2, 2), (6, 1, 6), (3, 2, 3), (5, 1, 5), (1, 1, 1), (12, 4, 1)],
)
def test_head_chunks_make_enough_units(heads, batch, chunks):
    assert head_chunks(heads, batch) == chunks
