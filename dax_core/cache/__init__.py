"""Step caches: skip redundant transformer work across denoising steps (TeaCache, MagCache), per CFG branch."""

from .base import BranchReport, StepCache, StepCacheReport
from .magcache import MagCache
from .residual import ResidualStepCache, SkipWindow
from .teacache import TeaCache, TeaCachePolicy

__all__ = [
    "BranchReport",
    "MagCache",
    "ResidualStepCache",
    "SkipWindow",
    "StepCache",
    "StepCacheReport",
    "TeaCache",
    "TeaCachePolicy",
]
