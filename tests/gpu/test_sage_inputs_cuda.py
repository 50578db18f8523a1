"""SageAttention2's sm90 inputs written by DAX's kernels, on an H100 / H200, against SageAttention's own preparation of
the same values (its Triton int8 kernels, its mean, its CUDA fp8 V kernels) at Wan shapes; the attention on them
against ``sageattn_qk_int8_pv_fp8_cuda_sm90`` and exact attention; a compiled 14B block on the fused path against the
default one, both against the float32 block."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton", reason="Triton is not installed with this PyTorch")

from dax_core.attention import BackendUnavailable, bind_attention, sage_layout
from dax_core.attention import sage_inputs as K
from dax_core.models import ops
from dax_core.models.rope import rope_cos_sin
from dax_core.models.spec import WAN21_T2V_1_3B, WAN21_T2V_14B, WanSpec
from dax_core.models.wan import WanBlock
from tests.numerics import rel_error
from tests.unit.tiny_wan import fill_checkpoint_like_

EPS = 1e-6
EXACT_ROWS = 2048  # query rows whose exact attention (float32, every key) the accuracy tests compute
# (spec, video grid in patches): 14B 720p's 75,600 tokens, and a 1.3B grid of 4,680 (partial 64/128-token blocks)
CASES = {"14b-720p": (WAN21_T2V_14B, (21, 45, 80)), "1.3b": (WAN21_T2V_1_3B, (5, 26, 36))}


@pytest.fixture(scope="module")
def sage2():
    try:
        bound = bind_attention("sage", "cuda", torch.bfloat16, inputs="fused")
    except (BackendUnavailable, ValueError) as err:
        pytest.skip(f"SageAttention2's sm90 kernel is not available here: {err}")
    from sageattention.quant import per_channel_fp8
    from sageattention.triton.quant_per_thread import per_thread_int8

    return bound, per_thread_int8, per_channel_fp8


def _projection(spec: WanSpec, tokens: int, seed: int, offset: float = 0.0) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(1, tokens, spec.dim, generator=g, device="cuda") * 2
    return (x + offset * torch.randn(1, 1, spec.dim, generator=g, device="cuda")).bfloat16()


def _weight(spec: WanSpec, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (1 + 0.1 * torch.randn(spec.dim, generator=g, device="cuda")).bfloat16()


def _codes_equal_fraction(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a == b).float().mean().item()


def _within_one_code(got: torch.Tensor, ref: torch.Tensor) -> bool:
    return bool(((got.int() - ref.int()).abs() <= 1).all())


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("with_rope", [True, False], ids=["self", "cross"])
def test_query_codes_and_scales_are_sages_own_of_the_same_values(sage2, case, with_rope):
    _, per_thread_int8, _ = sage2
    spec, grid = CASES[case]
    x, w = _projection(spec, grid[0] * grid[1] * grid[2], 0), _weight(spec, 1)
    rope = rope_cos_sin(spec, grid, "cuda") if with_rope else None
    codes, scale = K.query(x, w, rope, spec.num_heads, EPS)
    h = spec.num_heads
    normed = ops.rms_norm(x, w, EPS).unflatten(-1, (h, -1))
    reference = ops.rms_norm_rope(x, w, *rope, h, EPS) if rope else normed
    # independent of Sage: each code times its scale is Wan's normed value to half a step where the kernel's float32
    # sums and PyTorch's round every value alike (all but a few in 10^4); where they do not, x * rstd and then the
    # weighted value round to the other bf16 neighbour (one ulp each, at most 2^-7 of the value: two, 2^-6), and the
    # rotary embedding adds both of its pair's differences and one rounding of its own (2^-7 of the result); those
    # ulps are of the unrounded values, within half an ulp (2^-8) of the reference: 1 + 2^-7 covers that
    per_element = sage_layout.dequantize_query(torch.ones_like(codes), scale)
    error = (sage_layout.dequantize_query(codes, scale) - reference.float()).abs()
    half_step = 0.5 * per_element * (1 + 2**-8)
    if rope:
        pairs = normed.float().abs().unflatten(-1, (-1, 2)).sum(-1, keepdim=True).expand(*normed.shape[:-1], -1, 2)
        rounding = (2**-6 * pairs.flatten(-2) + 2**-7 * reference.float().abs()) * (1 + 2**-7)
    else:
        rounding = 2**-6 * reference.float().abs() * (1 + 2**-7)
    within_half = (error <= half_step).float().mean().item()
    excess = ((error - half_step) / per_element).max().item()
    logging.getLogger(__name__).info("codes within half a step: %.6f; worst %.3f steps beyond", within_half, excess)
    failing = ~(error <= half_step + rounding)
    if failing.any():  # where the bound fails: the element, its reference, the code's value, step and bound
        worst = torch.where(failing, error - half_step - rounding, -torch.inf).flatten().argmax()
        at = [int(i) for i in torch.unravel_index(worst, error.shape)]
        deq = sage_layout.dequantize_query(codes, scale).flatten()[worst].item()
        row = x[0, at[1]].float()
        logging.getLogger(__name__).info(
            "beyond the bound at %s: reference %.6g, code's value %.6g, code %d, step %.6g, rounding bound %.6g, "
            "%d elements beyond; its row's rms %.6g, x %.6g, w %.6g", at, reference.float().flatten()[worst].item(),
            deq, codes.flatten()[worst].item(), per_element.flatten()[worst].item(), rounding.flatten()[worst].item(),
            failing.sum().item(), row.square().mean().sqrt().item(), x.unflatten(-1, (h, -1))[tuple(at)].item(),
            w.unflatten(-1, (h, -1))[tuple(at[2:])].item() if w.ndim == 1 else float("nan"),
        )  # fmt: skip
    assert within_half > 0.999 and not failing.any(), (
        f"{within_half:.6f} of the codes within half a step of Wan's norm; the largest error is {excess:.3f} steps "
        f"beyond half a step"
    )
    q_ref, s_ref, _, _ = per_thread_int8(reference, reference, None, tensor_layout="NHD", BLKQ=64, WARPQ=16,
                                         BLKK=128, WARPK=128)  # fmt: skip
    step = (codes.int() - q_ref.int()).abs()
    equal = _codes_equal_fraction(codes, q_ref)
    # Sage's int8 arithmetic, the same Triton operations, on values equal but where the two norms' float32 sums
    # round a value to the other bf16 neighbour (``rounding`` above: near the top of the range one bf16 ulp is about
    # one int8 step) and, through the group's amax, its scale (a scale's relative change moves a code by as much of
    # its value): codes one step apart where the divisions round apart, further where those differences reach
    ref_step = sage_layout.dequantize_query(torch.ones_like(codes), s_ref)
    apart = 1 + (rounding + reference.float().abs() * (per_element - ref_step).abs() / ref_step) / per_element
    assert (step <= apart).all() and equal > 0.999, (
        f"codes: {equal:.6f} equal to Sage's quantization of Wan's norm, largest difference {step.max().item()}, "
        f"{(step > apart).sum().item()} codes further apart than the roundings allow"
    )
    # a group's scale is its amax / 127: its amax is one of its values, which may round to a bf16 two ulps (2^-6 of
    # it) from the reference's, as the codes' bound above has it (one scale at 14B cross-attention was beyond 2^-7)
    assert ((scale - s_ref).abs() <= s_ref * 2**-6 * (1 + 2**-7)).all() and _codes_equal_fraction(scale, s_ref) > 0.99


@pytest.mark.parametrize("case", list(CASES))
def test_key_codes_and_scales_are_sages_own_of_the_same_values(sage2, case):
    _, per_thread_int8, _ = sage2
    spec, grid = CASES[case]
    x, w = _projection(spec, grid[0] * grid[1] * grid[2], 2, offset=1.5), _weight(spec, 3)
    rope = rope_cos_sin(spec, grid, "cuda")
    k, mean = K.key_normed(x, w, rope, spec.num_heads, EPS)
    assert torch.equal(mean, k.mean(dim=1, keepdim=True))  # what SageAttention subtracts
    codes, scale = K.key_quantized(k, mean)
    _, _, k_ref, s_ref = per_thread_int8(k, k, mean, tensor_layout="NHD", BLKQ=64, WARPQ=16, BLKK=128, WARPK=128)
    assert torch.equal(scale, s_ref)  # k - mean in bf16, then Sage's own arithmetic
    assert torch.equal(codes, k_ref)


@pytest.mark.parametrize("case", list(CASES))
def test_value_layout_is_sages_own_and_the_codes_agree_to_its_division(sage2, case):
    _, _, per_channel_fp8 = sage2
    spec, grid = CASES[case]
    tokens = grid[0] * grid[1] * grid[2]
    v = _projection(spec, tokens, 4)
    values, scale = K.value(v, spec.num_heads)
    v4 = v.view(1, tokens, spec.num_heads, spec.head_dim)
    padded = F.pad(v4, (0, 0, 0, 0, 0, sage_layout.padded_tokens(tokens) - tokens))  # Sage's torch.cat of zeros
    v_ref, s_ref, _ = per_channel_fp8(padded, tensor_layout="NHD", smooth_v=False)
    assert values.shape == v_ref.shape and scale.shape == s_ref.shape
    # Sage builds with --use_fast_math: its amax / 448 and 448 / amax are approximate divisions (2 ulp), ours IEEE
    assert ((scale - s_ref).abs() <= s_ref * 2**-21).all()
    ours, theirs = values.float(), v_ref.float()
    # so a product on an e4m3 rounding boundary may round to the neighbouring code: one step, 2^-3 relative at most
    assert ((ours - theirs).abs() <= theirs.abs() * 2**-3 + 2**-9).all()
    assert _codes_equal_fraction(values.view(torch.uint8), v_ref.view(torch.uint8)) > 0.999


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("with_rope", [True, False], ids=["self", "cross"])
def test_attention_on_the_fused_inputs_is_sageattentions_own(sage2, case, with_rope):
    bound, _, _ = sage2
    spec, grid = CASES[case]
    tokens = grid[0] * grid[1] * grid[2]
    keys = tokens if with_rope else 512  # cross-attention: the 512 text tokens, no rotary embedding
    xq, xk, xv = _projection(spec, tokens, 5), _projection(spec, keys, 6, offset=1.5), _projection(spec, keys, 7)
    wq, wk = _weight(spec, 8), _weight(spec, 9)
    h = spec.num_heads
    if with_rope:
        rope = rope_cos_sin(spec, grid, "cuda")
        q, k = (ops.rms_norm_rope(x, w, *rope, h, EPS) for x, w in ((xq, wq), (xk, wk)))
    else:
        rope = None
        q, k = (ops.rms_norm(x, w, EPS).unflatten(-1, (h, -1)) for x, w in ((xq, wq), (xk, wk)))
    expected = bound(q, k, xv.unflatten(-1, (h, -1)))  # SageAttention2 preparing its own inputs
    prepared = bound.prepared
    got = prepared.attend(prepared.query(xq, wq, rope, h, EPS), prepared.key(xk, wk, rope, h, EPS),
                          prepared.value(xv, h))  # fmt: skip
    assert got.shape == expected.shape and got.dtype == torch.bfloat16
    # against exact attention (float32, every key) of the same bf16 q, k, v on the first query rows: the same kernel
    # on inputs equal but for rare one-step codes (the norms' float32 sums; V's scale, an IEEE division where Sage's
    # build divides with fast math) is as accurate as SageAttention2 preparing its own inputs (~4e-2 on these
    # inputs), and differs from it by a fraction of that error; wrong codes, scales or layouts miss both by far
    rows = slice(0, EXACT_ROWS)
    v = xv.unflatten(-1, (h, -1))
    exact = F.scaled_dot_product_attention(*(t.float().transpose(1, 2) for t in (q[:, rows], k, v))).transpose(1, 2)
    own, fused = rel_error(expected[:, rows], exact), rel_error(got[:, rows], exact)
    assert fused <= 1.05 * own, f"fused inputs {fused:.3e} against exact attention, SageAttention's own {own:.3e}"
    assert rel_error(got, expected) < 0.2 * own


@torch.inference_mode()
def test_a_compiled_14b_block_on_the_fused_path_is_as_accurate_as_the_default_path(sage2):
    from torch._dynamo.utils import counters

    bound, _, _ = sage2
    spec, grid = WAN21_T2V_14B, (3, 30, 52)  # 4,680 tokens: the 14B block at a size that compiles quickly
    torch.manual_seed(0)
    block = fill_checkpoint_like_(WanBlock(spec, dtype=torch.bfloat16)).cuda()
    block.modulation.data = block.modulation.data.float()
    tokens = grid[0] * grid[1] * grid[2]
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(1, tokens, spec.dim, generator=g, device="cuda").bfloat16()
    e0 = 0.1 * torch.randn(1, 6, spec.dim, generator=g, device="cuda")
    ctx = torch.randn(1, 512, spec.dim, generator=g, device="cuda").bfloat16()
    rope = rope_cos_sin(spec, grid, "cuda")
    exact = bind_attention("sdpa", "cuda", torch.float32)
    reference = copy.deepcopy(block).float()(x.float(), e0, ctx.float(), rope, exact, exact)
    default = bind_attention("sage", "cuda", torch.bfloat16)
    errors = {}
    for name, attention in (("default", default), ("fused", bound)):
        torch._dynamo.reset()
        counters.clear()
        got = torch.compile(block, fullgraph=True)(x, e0, ctx, rope, attention, attention)
        assert counters["graph_break"] == {}
        errors[name] = rel_error(got.float() - x.float(), reference - x.float())  # the block's update
    # the float32 block with exact attention as the reference: SageAttention's own error dominates both; the fused
    # inputs add a fraction of it (see above), the rest of the compiled block is the same graph
    assert errors["fused"] <= 1.05 * errors["default"], errors
