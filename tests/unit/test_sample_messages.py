"""Requests and results cross the control channel whole: every field, every tensor bit, the step-cache report."""

from __future__ import annotations

import dataclasses
import socket

import torch

from dax_core.cache.base import BranchReport, StepCacheReport
from dax_core.runtime.engine import SampleRequest, SampleResult
from dax_core.runtime.progress import StepProgress
from dax_core.runtime.sample_messages import (
    progress_fields,
    progress_from_message,
    request_fields,
    request_from_message,
    result_fields,
    result_from_message,
)
from dax_core.runtime.wire import recv_message, send_message


def _through_a_socket(kind: str, fields: dict, tensors: dict):
    a, b = socket.socketpair()
    with a, b:
        send_message(a, kind, fields, tensors)
        return recv_message(b)


def test_request_round_trip():
    g = torch.Generator().manual_seed(0)
    req = SampleRequest(
        positive=torch.randn(1, 512, 64, generator=g).to(torch.bfloat16),
        negative=torch.randn(1, 300, 64, generator=g).to(torch.bfloat16),
        latent=torch.randn(1, 16, 3, 8, 8, generator=g),
        seed=2**63 + 5,
        steps=30,
        cfg=6.5,
        shift=5.0,
        sampler="uni_pc",
        scheduler="beta",
        denoise=0.55,
        start_at_step=3,
        end_at_step=21,
        add_noise=False,
        return_with_leftover_noise=True,
        positive_image=torch.randn(1, 20, 3, 8, 8, generator=g),
        negative_image=torch.randn(1, 20, 3, 8, 8, generator=g),
        positive_clip=torch.randn(1, 257, 32, generator=g),
        negative_clip=torch.randn(1, 257, 32, generator=g).to(torch.bfloat16),
        low_noise_cfg=3.5,
    )
    got = request_from_message(_through_a_socket("request", *request_fields(req)))
    for field in dataclasses.fields(SampleRequest):
        want, have = getattr(req, field.name), getattr(got, field.name)
        if isinstance(want, torch.Tensor):
            assert torch.equal(have, want) and have.dtype == want.dtype, field.name
        else:
            assert have == want and type(have) is type(want), field.name
    assert torch.equal(got.run_sigmas(), req.run_sigmas())


def test_request_with_a_sigmas_input_round_trip():
    # a SIGMAS input crosses bit for bit, in its own dtype
    sigmas = torch.tensor([0.97, 0.8123456, 0.5, 0.25, 0.1], dtype=torch.float64)
    req = SampleRequest(
        torch.ones(1, 4, 8), None, torch.zeros(1, 16, 1, 4, 4), seed=1, steps=1, cfg=1.0, sigmas=sigmas,
        end_at_step=None, sampler="euler_ancestral",
    )  # fmt: skip
    got = request_from_message(_through_a_socket("request", *request_fields(req)))
    assert torch.equal(got.sigmas, sigmas) and got.sigmas.dtype == torch.float64
    assert got.end_at_step is None and got.sampler == "euler_ancestral"
    assert torch.equal(got.run_sigmas(), sigmas.float())


def test_request_without_negative_round_trip():
    req = SampleRequest(torch.ones(1, 4, 8), None, torch.zeros(1, 16, 1, 4, 4), seed=0, steps=2, cfg=1.0)
    assert request_from_message(_through_a_socket("request", *request_fields(req))).negative is None


def test_result_round_trip_with_step_cache_report_and_notes():
    report = StepCacheReport("TeaCache", 5, (BranchReport("cond", "CCSCC"), BranchReport("uncond", "CCSSC")))
    kernels = ("attention: PyTorch SDPA", "linears: 3 of 5 in fp8 per-token-per-channel, the others in bfloat16")
    notes = ("LoRA a.safetensors at strength 0.5: 3 parameters changed", "a second note")
    result = SampleResult(
        torch.randn(1, 16, 2, 4, 4), 5, 3.25, 1.5, report,
        first_step_compiled=True, kernels=kernels, peak_memory_bytes=(7 * 2**30, 2**33), notes=notes,
    )  # fmt: skip
    got = result_from_message(_through_a_socket("result", *result_fields(result)))
    assert torch.equal(got.latent, result.latent)
    assert (got.steps, got.seconds, got.first_step_seconds, got.step_cache) == (5, 3.25, 1.5, report)
    assert (got.first_step_compiled, got.kernels, got.peak_memory_bytes) == (True, kernels, (7 * 2**30, 2**33))
    assert got.notes == notes and got.summary_lines()[-2:] == list(notes)
    assert got.summary_lines() == result.summary_lines()
    assert got.summary_lines()[-3] == "peak GPU memory: 7.0, 8.0 GiB (per GPU)"


def test_progress_round_trip_with_a_preview_in_half_precision():
    g = torch.Generator().manual_seed(1)
    preview = torch.randn(1, 16, 1, 9, 16, generator=g)
    sent = StepProgress(3, 10, 7.5, 4.0, "TeaCache", (("cond", 1), ("uncond", 0)), preview)
    got = progress_from_message(_through_a_socket("progress", *progress_fields(sent)))
    assert (got.step, got.total, got.elapsed_s, got.first_step_s, got.cache, got.skipped) == (
        3, 10, 7.5, 4.0, "TeaCache", (("cond", 1), ("uncond", 0))
    )  # fmt: skip
    # float16 keeps 11 significant bits: rounding moves a normal value by at most 2**-11 of itself, a subnormal
    # one (below 2**-14) by at most half its spacing of 2**-24
    assert got.preview.dtype == torch.float32 and got.preview.shape == preview.shape
    assert torch.allclose(got.preview, preview, rtol=2**-11, atol=2**-25)
    plain = progress_from_message(_through_a_socket("progress", *progress_fields(StepProgress(1, 2, 1.0, 1.0))))
    assert plain.preview is None and plain.skipped == () and plain.cache is None


def test_request_with_a_noise_mask_round_trip():
    # Wan22ImageToVideoLatent's mask (0 on the first latent frame) reaches every rank
    mask = torch.ones(1, 1, 3, 4, 4)
    mask[:, :, 0] = 0.0
    req = SampleRequest(torch.ones(1, 4, 8), None, torch.zeros(1, 48, 3, 4, 4), seed=0, steps=2, cfg=1.0,
                        noise_mask=mask)  # fmt: skip
    got = request_from_message(_through_a_socket("request", *request_fields(req)))
    assert torch.equal(got.noise_mask, mask)
    assert (
        request_from_message(
            _through_a_socket("request", *request_fields(dataclasses.replace(req, noise_mask=None)))
        ).noise_mask
        is None
    )
