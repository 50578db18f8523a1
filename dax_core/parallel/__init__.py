"""Sequence parallelism for Wan: Ulysses, ring attention and their hybrid, optionally CFG-parallel.

cfg = ParallelConfig(world_size=N, ulysses=U, ring=R, cfg_parallel=False, overlap=True)
cfg.validate_for(spec)                                  # ValueError naming the layouts that work
plan = enable_sequence_parallel(model, cfg, group=None)  # None: the whole world
out = model(x, t, context)                              # same full inputs on every rank, full output on every rank
disable_sequence_parallel(model)
"""

from .config import ParallelConfig, sequence_layouts
from .lse_attention import LseAttentionFn, attention_with_lse, math_attention_with_lse
from .sequence_parallel import SequenceParallel, disable_sequence_parallel, enable_sequence_parallel

__all__ = [
    "LseAttentionFn",
    "ParallelConfig",
    "SequenceParallel",
    "attention_with_lse",
    "disable_sequence_parallel",
    "enable_sequence_parallel",
    "math_attention_with_lse",
    "sequence_layouts",
]
