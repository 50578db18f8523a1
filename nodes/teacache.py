"""TeaCache (DAX): DAX_MODEL + settings -> a new DAX_MODEL recipe that skips redundant denoising steps."""

from __future__ import annotations

import logging

from dax_core.cache.coefficients import MODELS, MODES
from dax_core.cache.config import AUTO, TeacacheConfig
from dax_core.recipe import Recipe

from .model_socket import dax_model_input, patched_model_tooltip
from .step_cache_inputs import cache_device, consecutive_skips, end_percent, fraction

log = logging.getLogger(__name__)

CUSTOM = "custom"

TOOLTIPS = {
    "threshold": "How much accumulated change of the timestep embedding may pass before the transformer runs again. "
    "0 turns skipping off; higher is faster and drifts further from the uncached video. Published settings "
    "(slower ... faster): 14B: 0.10 ... 0.20 in e0 mode, 0.14 ... 0.20 in e mode; 1.3B: 0.05 ... 0.10 in e0 mode, "
    "0.05 ... 0.08 in e mode.",
    "coefficients": "The rescaling polynomial: auto picks the published one for the loaded model size (Wan2.1 T2V "
    "1.3B or 14B); an I2V 14B model needs its resolution named (wan2.1-i2v-14b-480p or -720p: both files have the "
    "same shapes); custom reads custom_coefficients.",
    "mode": "e0: measure the time projection; the first 5 steps always run (TeaCache's retention steps: faster at "
    "the same quality, except on 1.3B). e: measure the time embedding; only the first step always runs.",
    "start_percent": "Fraction of the steps before which every step runs.",
    "max_consecutive_skips": "Run the transformer after this many skipped steps in a row (0: no limit). 1-3 helps "
    "if the video shows blocky artifacts or frozen motion.",
    "custom_coefficients": "With coefficients = custom: the polynomial, highest power first, comma-separated.",
}


def parse_coefficients(text: str) -> tuple[float, ...]:
    parts = [p.strip() for p in text.replace("[", "").replace("]", "").split(",") if p.strip()]
    if not parts:
        raise ValueError(
            "coefficients = custom needs custom_coefficients: the polynomial, highest power first, e.g. "
            "'-5784.55, 5449.51, -1811.17, 256.27, -13.02'"
        )
    try:
        return tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"custom_coefficients must be comma-separated numbers, got {text!r}") from None


class DaxTeacache:
    """Skip the transformer on steps whose timestep embedding barely changed, reusing the cached residual."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "dax_model": dax_model_input(),
                "threshold": (
                    "FLOAT",
                    {"default": 0.2, "min": 0.0, "max": 5.0, "step": 0.01, "tooltip": TOOLTIPS["threshold"]},
                ),
                "coefficients": ([AUTO, *MODELS, CUSTOM], {"default": AUTO, "tooltip": TOOLTIPS["coefficients"]}),
                "mode": (list(MODES), {"default": "e0", "tooltip": TOOLTIPS["mode"]}),
                "start_percent": fraction(0.0, TOOLTIPS["start_percent"]),
                "end_percent": end_percent(),
                "max_consecutive_skips": consecutive_skips(0, TOOLTIPS["max_consecutive_skips"]),
                "cache_device": cache_device(),
            },
            "optional": {
                "custom_coefficients": ("STRING", {"default": "", "tooltip": TOOLTIPS["custom_coefficients"]}),
            },
        }

    RETURN_TYPES = ("DAX_MODEL",)
    RETURN_NAMES = ("dax_model",)
    OUTPUT_TOOLTIPS = (patched_model_tooltip("TeaCache"),)
    FUNCTION = "patch"
    CATEGORY = "DAX"
    DESCRIPTION = (
        "TeaCache for Wan2.1: skips the transformer blocks on steps where the timestep-modulated input changed "
        "little and reuses the cached residual, per CFG branch. The sampler reports the skipped steps."
    )

    def patch(self, dax_model: Recipe, threshold, coefficients, mode, start_percent, end_percent,
              max_consecutive_skips, cache_device, custom_coefficients: str = "") -> tuple[Recipe]:  # fmt: skip
        config = TeacacheConfig(
            threshold=threshold,
            mode=mode,
            model=AUTO if coefficients in (AUTO, CUSTOM) else coefficients,
            coefficients=parse_coefficients(custom_coefficients) if coefficients == CUSTOM else (),
            start=start_percent,
            end=end_percent,
            max_consecutive_skips=max_consecutive_skips,
            cache_device=cache_device,
        )
        log.info("TeaCache (DAX): %s", config)
        return (dax_model.with_acceleration(config),)
