"""SageAttention2's sm90 input layouts as ``dax_core.attention.sage_layout`` writes them, checked against the index
formulas of SageAttention's own preparation kernels (restated here), the rounding bounds of int8 and fp8, and
float64 attention on the unquantized inputs."""

from __future__ import annotations

import pytest
import torch

from dax_core.attention import sage_layout as L
from tests.numerics import rel_error


def _qkv(b=2, s=150, h=3, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, s, h, d, generator=g) * 2
    k = torch.randn(b, s, h, d, generator=g) + 1.5 * torch.randn(1, 1, h, d, generator=g)  # an offset to smooth away
    v = torch.randn(b, s, h, d, generator=g)
    return q.bfloat16(), k.bfloat16(), v.bfloat16()


def test_value_positions_follow_sages_transpose_permute_kernel():
    # TransposePadPermuteKernel stores token m of each 16 at row (m / 8) * 2 + ((m / 2) % 4) * 4 + m % 2
    for m in range(16):
        assert L.V_ORDER[(m // 8) * 2 + ((m // 2) % 4) * 4 + m % 2] == m


@pytest.mark.parametrize("which", ["query", "key"])
def test_each_scale_covers_the_tokens_sages_quantization_kernels_give_it(which):
    # quant_query_per_thread_int8_kernel: program 8 w + t of a head covers tokens 16 w + t and 16 w + 8 + t;
    # quant_key_per_thread_int8_kernel: program 4 n + g covers tokens 128 n + 8 j + 2 g + {0, 1}, j = 0..15.
    s, h = 300, 3
    x = torch.randn(1, s, h, 64, generator=torch.Generator().manual_seed(1)).bfloat16()
    quantize = L.quantize_query if which == "query" else L.quantize_key
    _, base = quantize(x)
    for token in (0, 7, 8, 15, 16, 37, 129, 255, 299):
        for head in (0, 2):
            spiked = x.clone()
            spiked[0, token, head, 5] = 1000.0
            codes, scales = quantize(spiked)
            changed = (scales != base).nonzero().tolist()
            if which == "query":
                index = (token // 16) * 8 + token % 8
                group = [t for t in range(s) if t // 16 == token // 16 and t % 8 == token % 8]
            else:
                index = (token // 128) * 4 + (token % 8) // 2
                group = [t for t in range(s) if t // 128 == token // 128 and (t % 8) // 2 == (token % 8) // 2]
            assert changed == [[0, head, index]], (token, head)
            assert len(group) == (2 if which == "query" else 32) or token >= 256  # the last block is partial
            assert codes[0, token, head, 5] == 127
            # the spike takes the largest code; no code outside its group moves
            others = torch.ones(s, dtype=torch.bool)
            others[group] = False
            assert torch.equal(codes[0, others, head], quantize(x)[0][0, others, head])


def test_scale_shapes_are_what_the_sm90_kernel_checks():
    q, k, v = _qkv(s=150)
    assert L.quantize_query(q)[1].shape == (2, 3, 3 * 4 * 8)  # ceil(150 / 64) blocks x 4 warps x 8
    assert L.quantize_key(k)[1].shape == (2, 3, 2 * 4)  # ceil(150 / 128) blocks x 4
    values, scale = L.quantize_value(v)
    assert values.shape == (2, 64, 3, 256) and values.dtype == torch.float8_e4m3fn and scale.shape == (2, 3, 64)


def test_int8_codes_are_within_half_a_step_and_round_half_away_from_zero():
    q, k, _ = _qkv()
    for quantize, dequantize, x in ((L.quantize_query, L.dequantize_query, q),
                                    (L.quantize_key, L.dequantize_key, L.smooth_key(k)[0])):  # fmt: skip
        codes, scale = quantize(x)
        back = dequantize(codes, scale)
        step = dequantize(torch.ones_like(codes), scale)  # each element's own scale
        # rounding to the nearest code: at most half a step off; x / scale is itself rounded (relative 2^-24 of 127)
        assert ((back - x.float()).abs() <= step * (0.5 + 127 * 2**-23)).all()
        assert codes.abs().max() == 127  # each group's largest element takes the largest code
    ties = torch.tensor([2.5, -2.5, 0.5, -0.5, 127.0]).view(1, 1, 1, 5).expand(1, 16, 1, 5)
    codes = L.quantize_int8(ties.float(), torch.tensor(1.0))
    assert codes[0, 0, 0].tolist() == [3, -3, 1, -1, 127]  # half away from zero, as Sage's +-0.5 and truncation


def test_value_codes_are_within_half_an_fp8_step_and_the_padding_is_zero():
    _, _, v = _qkv()
    v[0, :, 1, 7] = 0  # an all-zero channel: scale 0, codes 0 (no NaN)
    values, scale = L.quantize_value(v)
    back = L.dequantize_value(values, scale, tokens=v.shape[1])
    assert scale[0, 1, 7] == 0 and torch.isfinite(back).all()
    # e4m3: 3 mantissa bits, so half a step is 2^-4 of the value; below 2^-6 (subnormals) half a step is 2^-10
    step = torch.maximum(v.float().abs() * 2**-4, 2**-10 * scale[:, None])
    assert ((back - v.float()).abs() <= step * (1 + 2**-20)).all()
    padding = [p for p in range(144, 256) if 144 + L.V_ORDER[p % 16] >= 150 or p >= 160]  # tokens 150..255
    assert (values[..., padding].float() == 0).all() and len(padding) == 106
    assert values.float().abs().amax() == L.FP8_MAX


def _attention64(q, k, v, scale):
    qd, kd, vd = (t.double().transpose(1, 2) for t in (q, k, v))
    return (torch.softmax(qd @ kd.transpose(-1, -2) * scale, -1) @ vd).transpose(1, 2)


def test_attention_on_the_quantized_inputs_matches_float64_attention_on_the_originals():
    q, k, v = _qkv()
    scale = 64**-0.5
    ref = _attention64(q, k, v, scale)
    prepared = (L.quantize_query(q), L.quantize_key(L.smooth_key(k)[0]), L.quantize_value(v))
    got = L.attend(*prepared, scale, torch.float32)
    # V in e4m3 dominates: each value within half a step, 2^-4 relative (RMS up to 2^-4 / sqrt(3) = 3.6 %); int8 Q
    # and K move each logit by well under 1 %. Measured 3.0e-2; smoothing K changes nothing (softmax is shift-invariant
    # per query row); a layout mix-up is O(1)
    assert rel_error(got, ref) < 5e-2
    unsmoothed = L.attend(prepared[0], L.quantize_key(k), prepared[2], scale, torch.float32)
    assert rel_error(unsmoothed, ref) < 5e-2
    values, v_scale = prepared[2]
    scrambled = (values.view(torch.uint8).flip(-1).view(torch.float8_e4m3fn), v_scale)  # tokens reversed
    assert rel_error(L.attend(prepared[0], prepared[1], scrambled, scale, torch.float32), ref) > 0.3
