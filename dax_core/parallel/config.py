"""How the GPUs of one worker group split a Wan forward: Ulysses × ring sequence parallelism, optionally CFG-parallel.

The world is ``cfg × ring × ulysses`` ranks. Ulysses exchanges heads for tokens with an all-to-all, so its
degree must divide the head count; ring attention passes key/value chunks around a ring and works for any
head count. Their product splits the video tokens; CFG-parallel gives each half of the GPUs one branch of
classifier-free guidance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..models.spec import WanSpec

_SPEC_NAMES = {"wan2.1-t2v-1.3b": "Wan2.1 1.3B", "wan2.1-t2v-14b": "Wan2.1 14B"}


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _layout(ulysses: int, ring: int) -> str:
    parts = [f"ulysses={ulysses}" if ulysses > 1 else "", f"ring={ring}" if ring > 1 else ""]
    return " ".join(p for p in parts if p) or "ulysses=1 ring=1"


def _join_or(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def sequence_layouts(sequence_degree: int, num_heads: int | None = None) -> list[tuple[int, int]]:
    """Every (ulysses, ring) pair whose product is ``sequence_degree``, largest Ulysses first; with
    ``num_heads`` given, only the pairs whose Ulysses degree divides it."""
    return [
        (u, sequence_degree // u)
        for u in reversed(_divisors(sequence_degree))
        if num_heads is None or num_heads % u == 0
    ]


@dataclass(frozen=True)
class ParallelConfig:
    """A validated split of ``world_size`` GPUs: ``ulysses × ring × (2 if cfg_parallel else 1) == world_size``.

    ``overlap`` hides the all-to-alls behind computation (head chunks of the attention are pipelined with
    their exchanges); ``overlap=False`` runs every exchange to completion before going on, for comparison.
    """

    world_size: int
    ulysses: int = 1
    ring: int = 1
    cfg_parallel: bool = False
    overlap: bool = True

    def __post_init__(self) -> None:
        for name in ("world_size", "ulysses", "ring"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ParallelConfig.{name} must be a positive integer, got {value!r}")
        for name in ("cfg_parallel", "overlap"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ParallelConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if self.cfg_parallel and self.world_size % 2:
            raise ValueError(
                f"CFG-parallel gives each half of the GPUs one guidance branch, so it needs an even number of GPUs; "
                f"got {self.world_size}: use an even GPU count or turn cfg_parallel off"
            )
        if self.ulysses * self.ring * self.cfg_degree != self.world_size:
            cfg_text = " × 2 (CFG-parallel)" if self.cfg_parallel else ""
            options = [_layout(u, r) for u, r in sequence_layouts(self.world_size // self.cfg_degree)]
            raise ValueError(
                f"ulysses {self.ulysses} × ring {self.ring}{cfg_text} = {self.ulysses * self.ring * self.cfg_degree} "
                f"must equal the {self.world_size} GPUs; for {self.world_size} GPUs"
                f"{' with CFG-parallel' if self.cfg_parallel else ''} use {_join_or(options)}"
            )

    @property
    def cfg_degree(self) -> int:
        """1, or 2 when each half of the GPUs takes one branch of classifier-free guidance."""
        return 2 if self.cfg_parallel else 1

    @property
    def sequence_degree(self) -> int:
        """Number of shards the video tokens are split into (ulysses × ring)."""
        return self.ulysses * self.ring

    def validate_for(self, spec: WanSpec) -> None:
        """Raise ValueError, naming the layouts that do work, if this split cannot run ``spec``."""
        heads = spec.num_heads
        if heads % self.ulysses == 0:
            return
        name = _SPEC_NAMES.get(spec.name, spec.name)
        degrees = [str(d) for d in _divisors(heads) if d > 1]
        working = [_layout(u, r) for u, r in sequence_layouts(self.sequence_degree, heads)]
        gpus = f"{self.sequence_degree} GPUs per branch" if self.cfg_parallel else f"{self.world_size} GPUs"
        raise ValueError(
            f"ulysses degree {self.ulysses} must divide the {heads} heads of {name}; use ulysses "
            f"{_join_or(degrees)}, or add ring: for {gpus} use {_join_or(working)}"
        )

    @classmethod
    def auto(cls, world_size: int, spec: WanSpec, cfg_parallel: bool = False, overlap: bool = True) -> ParallelConfig:
        """The split with the largest Ulysses degree that divides the heads (all-to-all is cheaper than the
        ring on NVLink); the rest of the GPUs form the ring."""
        probe = cls(world_size, ulysses=world_size // (2 if cfg_parallel else 1), cfg_parallel=cfg_parallel)
        ulysses, ring = sequence_layouts(probe.sequence_degree, spec.num_heads)[0]
        return cls(world_size, ulysses, ring, cfg_parallel, overlap)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParallelConfig:
        return cls(**data)

    def describe(self) -> str:
        cfg = " + CFG-parallel" if self.cfg_parallel else ""
        overlap = "on" if self.overlap else "off"
        return f"{self.world_size} GPUs: {_layout(self.ulysses, self.ring)}{cfg}, overlap {overlap}"
