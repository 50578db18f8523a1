"""Stand-in for ``dax_core.parallel`` until sequence parallelism lands: the same names, no parallelism.

``ParallelConfig`` validates the layout's arithmetic; ``enable_sequence_parallel`` leaves the model as it is, so
every rank computes the full result. Replace the import in ``distributed.py`` and delete this file then.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..models.spec import WanSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParallelConfig:
    world_size: int
    ulysses: int = 1
    ring: int = 1
    cfg_parallel: bool = False
    overlap: bool = True

    def __post_init__(self) -> None:
        for name in ("world_size", "ulysses", "ring"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ParallelConfig.{name} must be a positive integer, got {value!r}")
        branches = 2 if self.cfg_parallel else 1
        if self.ulysses * self.ring * branches != self.world_size:
            raise ValueError(
                f"ulysses {self.ulysses} x ring {self.ring}{' x 2 CFG branches' if self.cfg_parallel else ''} "
                f"must equal the {self.world_size} processes"
            )

    def validate_for(self, spec: WanSpec) -> None:
        if spec.num_heads % self.ulysses:
            raise ValueError(f"ulysses degree {self.ulysses} must divide the model's {spec.num_heads} heads")


def enable_sequence_parallel(model: Any, cfg: ParallelConfig, group: Any = None) -> None:
    if cfg.world_size > 1:
        log.warning(
            "sequence parallelism is not in this build: each of the %d ranks computes the full result", cfg.world_size
        )
