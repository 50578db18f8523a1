"""TeaCache's published rescaling polynomials and thresholds for Wan2.1.

Source: TeaCache4Wan2.1/teacache_generate.py and TeaCache4Wan2.1/README.md of github.com/ali-vilab/TeaCache
(commit 7c10efc). The modulated input whose relative L1 change is rescaled depends on the mode:

- ``"e0"`` (``--use_ret_steps`` there, "retention steps"): ``modulated_inp = e0``, the time projection output
  ``time_projection(e)`` [B, 6, dim] that modulates every block; the first 5 steps are always computed
  (``ret_steps = 5*2`` over cond+uncond calls) and, there, the last step is not forced.
- ``"e"`` (the default there): ``modulated_inp = e``, the time embedding ``time_embedding(sinusoid(t))``
  [B, dim]; the first step is always computed and so is the last (``cutoff_steps = sample_steps*2 - 2``).

DAX computes the last step in both modes (it sets the final denoised sample; a stale residual there is visible).
The polynomial maps the raw relative L1 change to an estimate of the output change; coefficients are listed
from the highest power down (numpy.poly1d order), as published.
"""

from __future__ import annotations

from collections.abc import Sequence

MODES: tuple[str, ...] = ("e0", "e")
RETENTION_STEPS: dict[str, int] = {"e0": 5, "e": 1}

COEFFICIENTS: dict[str, dict[str, tuple[float, ...]]] = {
    "e0": {
        "wan2.1-t2v-1.3b": (-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02),
        "wan2.1-t2v-14b": (-3.03318725e05, 4.90537029e04, -2.65530556e03, 5.87365115e01, -3.15583525e-01),
        "wan2.1-i2v-14b-480p": (2.57151496e05, -3.54229917e04, 1.40286849e03, -1.35890334e01, 1.32517977e-01),
        "wan2.1-i2v-14b-720p": (8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02),
    },
    "e": {
        "wan2.1-t2v-1.3b": (2.39676752e03, -1.31110545e03, 2.01331979e02, -8.29855975e00, 1.37887774e-01),
        "wan2.1-t2v-14b": (-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404),
        "wan2.1-i2v-14b-480p": (-3.02331670e02, 2.23948934e02, -5.25463970e01, 5.87348440e00, -2.01973289e-01),
        "wan2.1-i2v-14b-720p": (-114.36346466, 65.26524496, -18.82220707, 4.91518089, -0.23412683),
    },
}

# (slower and closer to the uncached video, faster) thresholds from the README's latency tables.
RECOMMENDED_THRESHOLDS: dict[str, dict[str, tuple[float, float]]] = {
    "e0": {
        "wan2.1-t2v-1.3b": (0.05, 0.10),
        "wan2.1-t2v-14b": (0.10, 0.20),
        "wan2.1-i2v-14b-480p": (0.20, 0.30),
        "wan2.1-i2v-14b-720p": (0.20, 0.30),
    },
    "e": {
        "wan2.1-t2v-1.3b": (0.05, 0.08),
        "wan2.1-t2v-14b": (0.14, 0.20),
        "wan2.1-i2v-14b-480p": (0.13, 0.26),
        "wan2.1-i2v-14b-720p": (0.20, 0.30),
    },
}

MODELS: tuple[str, ...] = tuple(COEFFICIENTS["e0"])


def published_coefficients(model: str, mode: str) -> tuple[float, ...]:
    """The polynomial published for ``model`` (a key of ``MODELS``) in ``mode`` ("e0" or "e")."""
    if mode not in MODES:
        raise ValueError(f"TeaCache mode {mode!r} is not one of {', '.join(MODES)}")
    if model not in COEFFICIENTS[mode]:
        raise ValueError(
            f"no published TeaCache coefficients for {model!r}; known models: {', '.join(MODELS)} "
            "(or give the polynomial coefficients explicitly)"
        )
    return COEFFICIENTS[mode][model]


def rescale(coefficients: Sequence[float], x: float) -> float:
    """The polynomial at ``x``, highest power first, by Horner's rule in float64 (as numpy.poly1d evaluates it)."""
    y = 0.0
    for c in coefficients:
        y = y * x + c
    return y
