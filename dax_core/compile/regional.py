"""Regional compilation: the transformer block is compiled once and the compiled code serves every block.

All blocks share one Python code path (``WanBlock.forward``) and one set of guards: parameters are graph
inputs, so block 2..N reuse the graph compiled for block 1 instead of recompiling 40 times. Static shapes by
default; a new resolution, frame count or batch compiles once more (PyTorch bounds the cache by its
recompile limit). Element-wise work is traced in its PyTorch form (``ops`` bypasses the Triton kernels while
compiling) so inductor fuses it with its neighbours; attention backends are custom ops, so the block is one
graph with no break.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from ..recipe import Acceleration, RecipeError, register_acceleration

log = logging.getLogger(__name__)

MODES = ("default", "max-autotune-no-cudagraphs")
BACKENDS = ("inductor", "aot_eager", "eager")


@register_acceleration
@dataclass(frozen=True)
class CompileConfig(Acceleration):
    """torch.compile of each transformer block: mode, backend, and whether shapes are dynamic."""

    kind: ClassVar[str] = "compile"
    mode: str = "default"
    backend: str = "inductor"
    dynamic: bool = False
    fullgraph: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise RecipeError(f"compile mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.backend not in BACKENDS:
            raise RecipeError(f"compile backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.backend != "inductor" and self.mode != "default":
            raise RecipeError(f"mode {self.mode!r} needs the inductor backend (got {self.backend!r})")

    def torch_compile_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"backend": self.backend, "fullgraph": self.fullgraph, "dynamic": self.dynamic}
        if self.backend == "inductor":
            kwargs["mode"] = self.mode
        return kwargs

    def apply(self, model: Any, env: Any) -> None:
        compile_blocks(model, self)


def compile_blocks(model: Any, config: CompileConfig, backend: Any | None = None) -> None:
    """Compile every block of ``model`` in place (per instance, reversible with ``uncompile_blocks``).

    ``backend`` overrides the config's backend with a callable (tests count compilations with one).
    """
    kwargs = config.torch_compile_kwargs()
    if backend is not None:
        kwargs = {"backend": backend, "fullgraph": config.fullgraph, "dynamic": config.dynamic}
    for block in model.blocks:
        block.compile(**kwargs)
    model.compiled = config
    log.info("compiling %d transformer blocks on first use (%s)", len(model.blocks), kwargs)


def uncompile_blocks(model: Any) -> None:
    for block in model.blocks:
        block._compiled_call_impl = None
    model.compiled = None
