"""What the engine reports while it samples: one StepProgress per step, preview latents and what the model ran."""

from __future__ import annotations

import pytest
import torch

from dax_core.accelerations import BuildEnv
from dax_core.cache.config import TeacacheConfig
from dax_core.models.wan import WanModel
from dax_core.quant.config import QuantizeConfig
from dax_core.recipe import Recipe
from dax_core.runtime import latents
from dax_core.runtime.engine import FEW_STEPS, SampleResult, WanEngine
from dax_core.runtime.progress import StepProgress, describe_model, preview_latent
from tests.unit.tiny_wan import TINY, fill_checkpoint_like_, tiny_engine, tiny_request

CPU = BuildEnv(torch.device("cpu"))


def _sample(engine: WanEngine, steps: int = 6, preview: bool = False) -> tuple[SampleResult, list[StepProgress]]:
    seen: list[StepProgress] = []
    result = engine.sample(tiny_request(steps=steps), on_progress=seen.append, preview=preview)
    return result, seen


def test_one_report_per_step_with_times_that_add_up():
    result, seen = _sample(tiny_engine())
    assert [p.step for p in seen] == list(range(1, 7)) and {p.total for p in seen} == {6}
    assert {p.first_step_s for p in seen} == {result.first_step_seconds}
    elapsed = [p.elapsed_s for p in seen]
    assert elapsed == sorted(elapsed) and elapsed[0] == result.first_step_seconds <= elapsed[-1] <= result.seconds
    assert all(p.preview is None and p.cache is None and p.skipped == () for p in seen)
    assert result.peak_memory_bytes == () and not result.first_step_compiled  # no CUDA, no compile here


def test_seconds_per_step_leave_out_the_first_step_and_the_eta_follows():
    p = StepProgress(step=3, total=10, elapsed_s=7.0, first_step_s=3.0)
    assert (p.seconds_per_step, p.eta_s) == (2.0, 14.0)
    first = StepProgress(step=1, total=4, elapsed_s=5.0, first_step_s=5.0)
    assert (first.seconds_per_step, first.eta_s) == (5.0, 15.0)
    assert StepProgress(step=4, total=4, elapsed_s=9.0, first_step_s=3.0).eta_s == 0.0
    with pytest.raises(ValueError, match="steps done count from 1"):
        StepProgress(step=0, total=4, elapsed_s=0.0, first_step_s=0.0)
    with pytest.raises(ValueError, match="first_step_s <= elapsed_s"):
        StepProgress(step=2, total=4, elapsed_s=1.0, first_step_s=2.0)


def test_skips_so_far_match_the_run_report_step_by_step():
    engine = tiny_engine()
    engine.model.step_cache = None
    # a high threshold skips often; e mode lets every step after the first be skipped
    TeacacheConfig(threshold=5.0, mode="e", coefficients=(1.0, 0.0)).apply(engine.model, CPU)
    result, seen = _sample(engine, steps=FEW_STEPS + 2)  # fewer steps turn the step cache off
    report = result.step_cache
    assert report is not None and sum(b.skipped for b in report.branches) > 0
    for p in seen:
        assert p.cache == report.cache
        assert dict(p.skipped) == {b.name: b.pattern[: p.step].count("S") for b in report.branches}


def test_the_last_preview_is_the_middle_frame_of_the_result():
    # Euler's last step (to sigma 0) lands on the denoised prediction, so the last preview is the result's middle
    # frame in model space, up to float32 rounding of the update and of normalising back (a few ulp of |x| ~ 1)
    result, seen = _sample(tiny_engine(), preview=True)
    assert all(p.preview is not None and p.preview.shape == (1, 16, 1, 8, 8) for p in seen)
    expected = latents.normalize(result.latent, 16)[:, :, 1:2]  # 3 latent frames: the middle one
    torch.testing.assert_close(seen[-1].preview, expected, rtol=0, atol=1e-5)
    assert not torch.equal(seen[0].preview, seen[-1].preview)  # each step's own prediction


def test_a_preview_latent_is_averaged_down_to_the_maximum_side():
    g = torch.Generator().manual_seed(0)
    video = torch.randn(2, 16, 5, 180, 320, generator=g, dtype=torch.bfloat16)
    small = preview_latent(video)
    assert small.shape == (2, 16, 1, 90, 160) and small.dtype == torch.float32 and small.device.type == "cpu"
    blocks = video[:, :, 2].float().reshape(2, 16, 90, 2, 160, 2).mean(dim=(3, 5))  # 2x2 box means of frame 2
    torch.testing.assert_close(small[:, :, 0], blocks, rtol=1e-6, atol=1e-6)
    assert preview_latent(torch.zeros(1, 16, 21, 90, 160)).shape == (1, 16, 1, 90, 160)  # 720p: as it is
    with pytest.raises(ValueError, match=r"video latent \[B, C, T, H, W\]"):
        preview_latent(torch.zeros(1, 16, 8, 8))


def test_the_model_is_described_by_what_it_runs():
    plain = describe_model(tiny_engine().model)
    assert plain == ("attention: PyTorch SDPA (PyTorch chooses the kernel)", "linears: float32")
    model = fill_checkpoint_like_(WanModel(TINY, dtype=torch.bfloat16))
    QuantizeConfig(dtype="int8").apply(model, CPU)
    lines = WanEngine(model, Recipe("unused.safetensors"), "cpu").kernels
    quantized = TINY.num_layers * 10  # q, k, v, o of both attentions and the two FFN layers of every block
    total = quantized + 6  # the kept embedders and the head
    assert lines[1] == f"linears: {quantized} of {total} in int8 per-token-per-channel, the others in bfloat16"
