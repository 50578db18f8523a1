"""Which kernel sage, flash and auto pick on which GPU, and how they call the packages (stand-in packages, no GPU)."""

from __future__ import annotations

import dataclasses
import sys
import types

import pytest
import torch

from dax_core.attention import BackendUnavailable, BoundAttention, auto, flash, sage
from dax_core.attention.registry import AttentionBackend
from dax_core.attention.sage import SAGE

CUDA = torch.device("cuda", 0)


class Recorder:
    """A package function standing in for a kernel: records its call, returns what the real one returns.

    style "sage": out, or (out, lse) with return_lse; "fa2": out, or (out, lse, probs) with return_attn_probs;
    "fa3-early": always (out, lse)."""

    def __init__(self, style: str = "sage"):
        self.calls: list[tuple[tuple, dict]] = []
        self.style = style

    def __call__(self, q, k, v, **kwargs):
        self.calls.append(((q, k, v), kwargs))
        out = torch.zeros_like(q)
        b, s, h, _ = q.shape
        lse = torch.full((b, h, s), 2.0)
        if self.style == "fa3-early":
            return out, lse
        if self.style == "fa2" and kwargs["return_attn_probs"]:
            return out, lse, None
        if self.style == "sage" and kwargs.get("return_lse"):
            return out, lse
        return out


def _sage2(enabled=("SM80_ENABLED", "SM89_ENABLED", "SM90_ENABLED")):
    package = types.ModuleType("sageattention")
    core = types.ModuleType("sageattention.core")
    for flag in ("SM80_ENABLED", "SM89_ENABLED", "SM90_ENABLED"):
        setattr(core, flag, flag in enabled)
    for kernel in sage.CUDA_KERNELS.values():
        setattr(package, kernel.function, Recorder())
    package.sageattn = Recorder()
    package.core = core
    return package, core


def _sage1():
    package = types.ModuleType("sageattention")
    package.sageattn = Recorder()
    return package, None


@pytest.fixture
def gpu(monkeypatch):
    """Pretend CUDA device 0 has the compute capability set on the returned object."""
    state = types.SimpleNamespace(capability=(9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: state.capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")
    return state


@pytest.fixture
def install(monkeypatch):
    """Install a stand-in package under its module name(s) for one test (import caches cleared around it)."""

    def put(package, core=None):
        monkeypatch.setitem(sys.modules, package.__name__, package)
        if core is not None:
            monkeypatch.setitem(sys.modules, core.__name__, core)
        sage._package.cache_clear()
        flash._import.cache_clear()
        return package

    yield put
    sage._package.cache_clear()
    flash._import.cache_clear()


def fresh(backend: AttentionBackend) -> AttentionBackend:
    """The registered backend with its once-per-process availability not yet checked."""
    return dataclasses.replace(backend)


# --- sage ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capability", "function", "qk", "pv"),
    [
        ((9, 0), "sageattn_qk_int8_pv_fp8_cuda_sm90", "per_thread", "fp32+fp32"),
        ((8, 9), "sageattn_qk_int8_pv_fp8_cuda", "per_thread", "fp32+fp16"),
        ((12, 0), "sageattn_qk_int8_pv_fp8_cuda", "per_warp", "fp32+fp16"),
        ((8, 0), "sageattn_qk_int8_pv_fp16_cuda", "per_thread", "fp32"),
        ((8, 6), "sageattn_qk_int8_pv_fp16_cuda", "per_thread", "fp32"),
    ],
)
def test_sage2_picks_the_kernel_of_the_gpu_with_sageattentions_own_defaults(gpu, install, capability, function, qk, pv):
    gpu.capability = capability
    package = install(*_sage2())
    bound = fresh(SAGE).bind(CUDA, torch.bfloat16)
    assert function in bound.kernel and f"{qk}," in bound.kernel and f"{pv} accumulation" in bound.kernel
    assert bound.supports_lse
    q = torch.randn(1, 8, 2, 16, dtype=torch.bfloat16)
    sage.run_sage(q, q, q, None, True, _key(function), qk, pv)
    _, kwargs = getattr(package, function).calls[-1]
    assert kwargs == {
        "tensor_layout": "NHD",
        "is_causal": False,
        "qk_quant_gran": qk,
        "sm_scale": 16**-0.5,
        "pv_accum_dtype": pv,
        "return_lse": True,
    }


def _key(function: str) -> str:
    return next(k.key for k in sage.CUDA_KERNELS.values() if k.function == function)


def test_sage2_options_reach_the_kernel_and_bad_ones_name_the_kernels_choices(gpu, install):
    install(*_sage2())
    backend = fresh(SAGE)
    gpu.capability = (8, 9)
    bound = backend.bind(CUDA, torch.float16, qk_quant_gran="per_warp", pv_accum_dtype="fp32+fp32")
    assert "per_warp" in bound.kernel and "fp32+fp32 accumulation" in bound.kernel
    gpu.capability = (9, 0)
    with pytest.raises(ValueError, match=r"sm90 kernel .* accumulates P·V as fp32\+fp32, not fp16"):
        backend.bind(CUDA, torch.bfloat16, pv_accum_dtype="fp16")


def test_sage2_run_returns_lse_as_float32_bhs(install):
    package = install(*_sage2())
    q = torch.randn(2, 8, 3, 16, dtype=torch.bfloat16)
    out, lse = sage.run_sage(q, q, q, 0.5, True, "sm90", "per_thread", "fp32+fp32")
    assert out.shape == q.shape and lse.shape == (2, 3, 8) and lse.dtype == torch.float32
    out, lse = sage.run_sage(q, q, q, 0.5, False, "sm90", "per_thread", "fp32+fp32")
    assert lse.numel() == 0
    assert package.sageattn_qk_int8_pv_fp8_cuda_sm90.calls[-1][1]["sm_scale"] == 0.5


@pytest.mark.parametrize(
    ("capability", "enabled", "message"),
    [
        ((7, 5), ("SM80_ENABLED", "SM89_ENABLED", "SM90_ENABLED"), "no CUDA kernel for Test GPU .*7.5"),
        ((9, 0), ("SM80_ENABLED", "SM89_ENABLED"), "lacks its sm90 kernel .* rebuild it on this GPU"),
    ],
)
def test_sage2_without_a_kernel_for_the_gpu_is_an_error(gpu, install, capability, enabled, message):
    gpu.capability = capability
    install(*_sage2(enabled))
    with pytest.raises(BackendUnavailable, match=message):
        fresh(SAGE).bind(CUDA, torch.bfloat16)


def test_sage2_with_no_compiled_kernel_is_unavailable(install):
    install(*_sage2(enabled=()))
    with pytest.raises(BackendUnavailable, match="none of its CUDA kernels loaded"):
        fresh(SAGE).bind(CUDA, torch.bfloat16)


def test_sage_needs_a_gpu_and_half_precision(gpu, install):
    install(*_sage2())
    backend = fresh(SAGE)
    with pytest.raises(BackendUnavailable, match="CUDA GPUs only"):
        backend.bind("cpu", torch.bfloat16)
    with pytest.raises(BackendUnavailable, match=r"bf16 or fp16 activations, not torch\.float32"):
        backend.bind(CUDA, torch.float32)


def test_sage1_triton_runs_with_k_smoothed_out_of_place_and_no_options(gpu, install):
    package = install(*_sage1())
    backend = fresh(SAGE)
    bound = backend.bind(CUDA, torch.bfloat16)
    assert "Triton" in bound.kernel and not bound.supports_lse
    with pytest.raises(ValueError, match="leave the SageAttention options on auto"):
        backend.bind(CUDA, torch.bfloat16, qk_quant_gran="per_warp")
    q, k, v = (torch.randn(1, 6, 2, 16) for _ in range(3))
    k_before = k.clone()
    sage.run_sage(q, k, v, None, False, "triton", "auto", "auto")
    (_, k_passed, _), kwargs = package.sageattn.calls[-1]
    assert kwargs == {"tensor_layout": "NHD", "is_causal": False, "sm_scale": 16**-0.5, "smooth_k": False}
    torch.testing.assert_close(k_passed, k - k.mean(dim=1, keepdim=True))  # the same float32 mean: default tolerances
    assert torch.equal(k, k_before)  # the caller's k is not modified


# --- flash -----------------------------------------------------------------------------------------------------


def _flash2():
    package = types.ModuleType("flash_attn")
    package.__version__ = "2.8.3"

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, return_attn_probs=False):
        return recorder(q, k, v, softmax_scale=softmax_scale, causal=causal, return_attn_probs=return_attn_probs)

    recorder = Recorder("fa2")
    package.flash_attn_func = flash_attn_func
    package.recorder = recorder
    return package


def _flash3_early():
    """Early FlashAttention 3 builds: no return_attn_probs argument, always (out, lse)."""
    package = types.ModuleType("flash_attn_interface")

    def flash_attn_func(q, k, v, softmax_scale=None, causal=False):
        return recorder(q, k, v, softmax_scale=softmax_scale, causal=causal)

    recorder = Recorder("fa3-early")
    package.flash_attn_func = flash_attn_func
    package.recorder = recorder
    return package


def test_flash_prefers_fa3_on_hopper_and_fa2_elsewhere(gpu, install):
    install(_flash2())
    install(_flash3_early())
    backend = fresh(flash.FLASH)
    gpu.capability = (9, 0)
    assert "FlashAttention 3" in backend.bind(CUDA, torch.bfloat16).kernel
    gpu.capability = (8, 0)
    assert "FlashAttention 2.8.3" in backend.bind(CUDA, torch.bfloat16).kernel
    gpu.capability = (7, 5)
    with pytest.raises(BackendUnavailable, match=r"FlashAttention 2 needs 8\.0 or newer"):
        backend.bind(CUDA, torch.bfloat16)


@pytest.mark.parametrize("make", [_flash2, _flash3_early], ids=["fa2", "fa3-early"])
def test_flash_returns_out_and_lse_from_either_version(install, make):
    package = install(make())
    version = 2 if package.__name__ == "flash_attn" else 3
    q = torch.randn(2, 8, 3, 16, dtype=torch.bfloat16)
    out, lse = flash.run_flash(q, q, q, 0.25, True, version)
    assert out.shape == q.shape and lse.shape == (2, 3, 8) and lse.dtype == torch.float32
    out, lse = flash.run_flash(q, q, q, 0.25, False, version)
    assert out.shape == q.shape and lse.numel() == 0
    assert package.recorder.calls[-1][1]["softmax_scale"] == 0.25


def test_ops_have_fake_implementations_for_tracing():
    """torch.compile sees the opaque kernels through their fake implementations: right shapes, nothing run."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 100, 4, 64, dtype=torch.bfloat16)
        k = torch.empty(2, 30, 4, 64, dtype=torch.bfloat16)
        out, lse = sage.sage_attention(q, k, k, None, True, "sm90", "per_thread", "fp32+fp32")
        assert out.shape == (2, 100, 4, 64) and out.dtype == torch.bfloat16 and out.is_contiguous()
        assert lse.shape == (2, 4, 100) and lse.dtype == torch.float32
        out, lse = flash.flash_attention(q, k, k, 0.1, False, 3)
        assert out.shape == (2, 100, 4, 64) and lse.numel() == 0


# --- auto ------------------------------------------------------------------------------------------------------


def _stub(name: str, reason: str | None = None) -> AttentionBackend:
    def binder(device, dtype, options):
        return BoundAttention(name, f"{name} kernel {dict(options)}", run=lambda q, k, v, s: q)

    options = sage.OPTIONS if name == "sage" else {}
    return AttentionBackend(name, name, check=lambda: reason, binder=binder, options=options)


@pytest.fixture
def registry(monkeypatch):
    """auto choosing among stub backends: set ``missing`` to the names that are not installed."""
    state = types.SimpleNamespace(missing=set(), flavour="cuda")

    def get_backend(name):
        if name in state.missing:
            raise BackendUnavailable(f"{name} is not installed")
        return _stub(name)

    monkeypatch.setattr(auto, "get_backend", get_backend)
    monkeypatch.setattr(sage, "flavour", lambda: state.flavour)
    return state


@pytest.mark.parametrize(
    ("capability", "missing", "flavour", "chosen"),
    [
        ((9, 0), set(), "cuda", "sage"),
        ((9, 0), {"sage"}, None, "sdpa_cudnn"),
        ((9, 0), set(), "triton", "sdpa_cudnn"),  # SageAttention 1.x Triton is slower than cuDNN on Hopper
        ((9, 0), {"sage", "sdpa_cudnn"}, None, "flash"),
        ((9, 0), {"sage", "sdpa_cudnn", "flash"}, None, "sdpa"),
        ((8, 9), set(), "cuda", "sage"),
        ((8, 9), {"sage"}, None, "flash"),
        ((8, 0), {"sage", "flash"}, None, "sdpa"),
    ],
)
def test_auto_takes_the_fastest_installed_backend(gpu, registry, capability, missing, flavour, chosen):
    gpu.capability = capability
    registry.missing, registry.flavour = missing, flavour
    bound = fresh(auto.AUTO).bind(CUDA, torch.bfloat16)
    assert bound.backend == chosen and bound.kernel.endswith("(chosen by auto)")


def test_auto_passes_sage_options_to_sage_only(gpu, registry):
    bound = fresh(auto.AUTO).bind(CUDA, torch.bfloat16, pv_accum_dtype="fp32+fp32")
    assert "'pv_accum_dtype': 'fp32+fp32'" in bound.kernel
    registry.missing = {"sage"}
    bound = fresh(auto.AUTO).bind(CUDA, torch.bfloat16, pv_accum_dtype="fp32+fp32")
    assert bound.kernel.startswith("sdpa_cudnn kernel {}")


@pytest.mark.parametrize(("capability", "chosen"), [((9, 0), "sdpa_cudnn"), ((8, 9), "flash")])
def test_auto_keeps_sage_off_cross_attention(gpu, registry, capability, chosen):
    gpu.capability = capability
    assert fresh(auto.AUTO).bind(CUDA, torch.bfloat16, role="cross").backend == chosen


def test_an_auto_config_chooses_self_and_cross_attention_separately(gpu, registry, monkeypatch):
    from dax_core.attention import config
    from dax_core.attention.config import AttentionConfig

    monkeypatch.setattr(config, "get_backend", lambda name: fresh(auto.AUTO) if name == "auto" else _stub(name))
    self_attn, cross_attn = AttentionConfig("auto").bind(CUDA, torch.bfloat16)
    assert (self_attn.backend, cross_attn.backend) == ("sage", "sdpa_cudnn")
    self_attn, cross_attn = AttentionConfig("auto", cross_backend="sage").bind(CUDA, torch.bfloat16)
    assert (self_attn.backend, cross_attn.backend) == ("sage", "sage")
    self_attn, cross_attn = AttentionConfig("sage").bind(CUDA, torch.bfloat16)
    assert cross_attn is self_attn
