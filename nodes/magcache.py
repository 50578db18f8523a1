"""MagCache (DAX): DAX_MODEL + settings -> a new DAX_MODEL recipe that skips steps by calibrated residual drift."""

from __future__ import annotations

import logging

from dax_core.cache.config import AUTO, MagcacheConfig
from dax_core.cache.magcache_ratios import MAG_RATIOS
from dax_core.recipe import Recipe

from .model_socket import dax_model_input, patched_model_tooltip
from .step_cache_inputs import cache_device, consecutive_skips, end_percent, fraction

log = logging.getLogger(__name__)

TOOLTIPS = {
    "threshold": "Accumulated residual drift allowed before the transformer runs again. 0 turns skipping off; "
    "higher is faster and drifts further from the uncached video. Published settings: 0.12 with K 2-4 (1.3B), "
    "0.24 with K 6 (14B, fastest).",
    "max_consecutive_skips": "MagCache's K: run the transformer after this many skipped steps in a row (0: no limit).",
    "retention_ratio": "Fraction of the first steps that always run (they shape the layout of the video).",
    "model": "Whose calibrated magnitude ratios to use: auto picks the loaded model size (Wan2.1 T2V 1.3B or 14B); "
    "an I2V 14B model needs its resolution named (wan2.1-i2v-14b-480p or -720p).",
}


class DaxMagcache:
    """Skip the transformer on steps whose calibrated residual drift is small, reusing the cached residual."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "dax_model": dax_model_input(),
                "threshold": (
                    "FLOAT",
                    {"default": 0.12, "min": 0.0, "max": 2.0, "step": 0.01, "tooltip": TOOLTIPS["threshold"]},
                ),
                "max_consecutive_skips": consecutive_skips(2, TOOLTIPS["max_consecutive_skips"]),
                "retention_ratio": fraction(0.2, TOOLTIPS["retention_ratio"]),
                "end_percent": end_percent(),
                "model": ([AUTO, *MAG_RATIOS], {"default": AUTO, "tooltip": TOOLTIPS["model"]}),
                "cache_device": cache_device(),
            }
        }

    RETURN_TYPES = ("DAX_MODEL",)
    RETURN_NAMES = ("dax_model",)
    OUTPUT_TOOLTIPS = (patched_model_tooltip("MagCache"),)
    FUNCTION = "patch"
    CATEGORY = "DAX"
    DESCRIPTION = (
        "MagCache for Wan2.1: skips the transformer blocks on steps where the calibrated residual magnitude "
        "barely drifts and reuses the cached residual, per CFG branch. Use it instead of TeaCache, not with it."
    )

    def patch(self, dax_model: Recipe, threshold, max_consecutive_skips, retention_ratio, end_percent, model,
              cache_device) -> tuple[Recipe]:  # fmt: skip
        config = MagcacheConfig(
            threshold=threshold,
            max_consecutive_skips=max_consecutive_skips,
            retention_ratio=retention_ratio,
            end=end_percent,
            model=model,
            cache_device=cache_device,
        )
        log.info("MagCache (DAX): %s", config)
        return (dax_model.with_acceleration(config),)
