"""TeaCache's decision rule alone: published polynomials, relative L1, accumulation, skip window, branches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dax_core.cache.coefficients import COEFFICIENTS, MODELS, RETENTION_STEPS, published_coefficients, rescale
from dax_core.cache.residual import SkipWindow
from dax_core.cache.teacache import TeaCachePolicy


def test_published_polynomials_cover_both_modes_and_use_the_right_input():
    assert set(MODELS) == {"wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.1-i2v-14b-480p", "wan2.1-i2v-14b-720p"}
    # spot values of teacache_generate.py: use_ret_steps (e0) and default (e) lists differ
    assert published_coefficients("wan2.1-t2v-14b", "e0")[0] == -3.03318725e05
    assert published_coefficients("wan2.1-t2v-14b", "e")[-1] == -13.02252404
    assert published_coefficients("wan2.1-t2v-1.3b", "e0")[-1] == -4.99875664e-02
    assert published_coefficients("wan2.1-t2v-1.3b", "e")[0] == 2.39676752e03
    assert RETENTION_STEPS == {"e0": 5, "e": 1}
    with pytest.raises(ValueError, match="no published TeaCache coefficients for 'custom'"):
        published_coefficients("custom", "e0")
    with pytest.raises(ValueError, match="mode 'x'"):
        published_coefficients("wan2.1-t2v-14b", "x")


@pytest.mark.parametrize("x", [0.0, 0.013, 0.05, 0.21, 1.7])
def test_rescale_matches_numpy_polyval(x):
    for mode in COEFFICIENTS.values():
        for coefficients in mode.values():
            # same Horner recurrence as numpy in float64: equal up to the last bit or two
            assert rescale(coefficients, x) == pytest.approx(np.polyval(coefficients, x), rel=1e-12, abs=1e-12)


def _const(value: float, n: int = 4) -> torch.Tensor:
    return torch.full((1, n), value, dtype=torch.float32)


def test_relative_l1_accumulates_and_resets_after_a_computed_step():
    policy = TeaCachePolicy(coefficients=(1.0, 0.0), threshold=0.25)  # rescale(x) = x
    steps = [1.0, 1.1, 1.21, 1.331, 1.4641]  # each a 10 % relative change of the previous one
    decisions = []
    for i, v in enumerate(steps):
        decisions.append(policy.decide({"cond": _const(v)}, {"cond": i == 0})["cond"])
    # accumulated: -, 0.1 (skip), 0.2 (skip), 0.3 >= 0.25 (compute, reset), 0.1 (skip)
    assert decisions == [True, False, False, True, False]
    assert policy.track("cond").accumulated == pytest.approx(0.1, rel=1e-6)  # float32 inputs
    assert policy.track("cond").distance == pytest.approx(0.1, rel=1e-6)


def test_threshold_zero_never_skips_even_when_the_polynomial_is_negative():
    policy = TeaCachePolicy(coefficients=published_coefficients("wan2.1-t2v-14b", "e"), threshold=0.0)
    assert rescale(policy.coefficients, 0.01) < 0  # the 14B "e" polynomial dips below zero for small changes
    decisions = [policy.decide({"b": _const(1 + 0.01 * i)}, {"b": i == 0})["b"] for i in range(6)]
    assert decisions == [True] * 6


def test_forced_steps_reset_the_sum_but_still_update_the_previous_input():
    policy = TeaCachePolicy(coefficients=(1.0, 0.0), threshold=0.25)
    policy.decide({"b": _const(1.0)}, {"b": True})
    assert policy.decide({"b": _const(1.1)}, {"b": False}) == {"b": False}  # 0.1
    assert policy.decide({"b": _const(2.0)}, {"b": True}) == {"b": True}  # forced: sum back to 0, previous = 2
    assert policy.track("b").accumulated == 0.0
    assert policy.decide({"b": _const(2.2)}, {"b": False}) == {"b": False}  # 0.1 against 2.0, not 0.9 against 1.1
    assert policy.track("b").distance == pytest.approx(0.1, rel=1e-6)


def test_branches_keep_separate_sums():
    policy = TeaCachePolicy(coefficients=(1.0, 0.0), threshold=0.25)
    policy.decide({"cond": _const(1.0), "uncond": _const(1.0)}, {"cond": True, "uncond": True})
    got = policy.decide({"cond": _const(1.1), "uncond": _const(2.0)}, {"cond": False, "uncond": False})
    assert got == {"cond": False, "uncond": True}  # 0.1 < 0.25; 1.0 >= 0.25
    got = policy.decide({"cond": _const(1.21), "uncond": _const(2.2)}, {"cond": False, "uncond": False})
    assert got == {"cond": False, "uncond": False}  # cond 0.2; uncond restarted: 0.1
    assert policy.track("cond").accumulated == pytest.approx(0.2, rel=1e-6)
    assert policy.track("uncond").accumulated == pytest.approx(0.1, rel=1e-6)


def test_a_zero_or_non_finite_input_computes_instead_of_dividing_by_zero():
    policy = TeaCachePolicy(coefficients=(1.0, 0.0), threshold=10.0)
    policy.decide({"b": _const(0.0)}, {"b": True})
    assert policy.decide({"b": _const(1.0)}, {"b": False}) == {"b": True}  # previous all zero: infinite change
    assert policy.track("b").distance == math.inf
    assert policy.decide({"b": _const(float("nan"))}, {"b": False}) == {"b": True}


def test_the_policy_rejects_bad_settings():
    with pytest.raises(ValueError, match="threshold must be a finite number >= 0"):
        TeaCachePolicy((1.0,), -0.1)
    with pytest.raises(ValueError, match="finite polynomial coefficients"):
        TeaCachePolicy((), 0.1)


@pytest.mark.parametrize(
    ("window", "total", "allowed"),
    [
        (SkipWindow(first_steps=1), 6, [1, 2, 3, 4]),  # the first and the last step are always computed
        (SkipWindow(first_steps=5), 8, [5, 6]),
        (SkipWindow(first_steps=1, start=0.1, end=0.9), 50, list(range(5, 45))),
        (SkipWindow(first_steps=1, start=0.5), 10, [5, 6, 7, 8]),
        (SkipWindow(first_steps=1), 1, []),
        (SkipWindow(first_steps=1), 2, []),
    ],
)
def test_skip_window(window, total, allowed):
    assert [i for i in range(total) if window.allows(i, total)] == allowed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"first_steps": 0}, "first_steps must be an integer >= 1"),
        ({"start": 0.6, "end": 0.5}, "need 0 <= start < end <= 1"),
        ({"end": 1.5}, "need 0 <= start < end <= 1"),
        ({"max_consecutive": -1}, "max_consecutive must be an integer >= 0"),
    ],
)
def test_skip_window_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SkipWindow(**kwargs)
