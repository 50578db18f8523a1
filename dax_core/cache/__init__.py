"""Step caches: skip redundant transformer work across denoising steps (TeaCache), with per-branch state."""

from .base import BranchReport, StepCache, StepCacheReport
from .residual import ResidualStepCache, SkipWindow
from .teacache import TeaCache, TeaCachePolicy

__all__ = [
    "BranchReport",
    "ResidualStepCache",
    "SkipWindow",
    "StepCache",
    "StepCacheReport",
    "TeaCache",
    "TeaCachePolicy",
]
