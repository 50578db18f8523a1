"""Regional compilation: the transformer block is compiled once and the compiled code serves every block.

All blocks share one Python code path (``WanBlock.forward``) and one set of guards: parameters are graph
inputs, so block 2..N reuse the graph compiled for block 1 instead of recompiling 40 times. Static shapes by
default; a new resolution, frame count, batch or text length compiles once more (PyTorch bounds the cache by
its recompile limit), and ``CompiledBlocks`` says so in the log. Element-wise work is traced in its PyTorch form
(``ops`` bypasses the Triton kernels while compiling) so inductor fuses it with its neighbours; attention
backends are custom ops, so the block is one graph with no break.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..recipe import Acceleration, RecipeError, register_acceleration

log = logging.getLogger(__name__)

MODES = ("default", "max-autotune-no-cudagraphs")
BACKENDS = ("inductor", "aot_eager", "eager")


@register_acceleration
@dataclass(frozen=True)
class CompileConfig(Acceleration):
    """torch.compile of each transformer block: mode, backend, whether shapes are dynamic, and whether the compiled
    block stack then runs as CUDA graphs (``cuda_graphs``: one GPU only; see ``dax_core.compile.cuda_graphs``)."""

    kind: ClassVar[str] = "compile"
    mode: str = "default"
    backend: str = "inductor"
    dynamic: bool = False
    fullgraph: bool = True
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise RecipeError(f"compile mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.backend not in BACKENDS:
            raise RecipeError(f"compile backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.backend != "inductor" and self.mode != "default":
            raise RecipeError(f"mode {self.mode!r} needs the inductor backend (got {self.backend!r})")
        if not isinstance(self.cuda_graphs, bool):
            raise RecipeError(f"cuda_graphs must be true or false, got {self.cuda_graphs!r}")

    def torch_compile_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"backend": self.backend, "fullgraph": self.fullgraph, "dynamic": self.dynamic}
        if self.backend == "inductor":
            kwargs["mode"] = self.mode
        return kwargs

    def describe(self, backend: str | None = None) -> str:
        """In words, for logs: "inductor, mode default, static shapes" (``backend`` names an overriding one)."""
        mode = [f"mode {self.mode}"] if backend is None and self.backend == "inductor" else []
        graphs = ["CUDA graphs"] if self.cuda_graphs else []
        return ", ".join(
            [backend or self.backend, *mode, "dynamic shapes" if self.dynamic else "static shapes", *graphs]
        )

    def check_world_size(self, world_size: int) -> None:
        """Refuse CUDA graphs on a forward split over ``world_size`` > 1 ranks (checked on each rank, and from the
        recipe before a worker group starts)."""
        if self.cuda_graphs and world_size > 1:
            raise RecipeError(
                f"Compile with cuda_graphs on {world_size} GPUs: the sequence-parallel collectives run outside a CUDA "
                "graph; turn cuda_graphs off, or run on one GPU"
            )

    def apply(self, model: Any, env: Any) -> None:
        """Compile the blocks (unless they already are, with these settings), then turn CUDA graphs on if asked."""
        if self.cuda_graphs:
            self.check_world_size(getattr(env, "world_size", 1))
            if env.device.type != "cuda":
                raise RecipeError(
                    f"CUDA graphs need a CUDA GPU (this model runs on {env.device}): turn cuda_graphs off"
                )
        compiled = getattr(model, "compiled", None)
        if compiled is None or compiled.config.torch_compile_kwargs() != self.torch_compile_kwargs():
            compile_blocks(model, self)
        if self.cuda_graphs:
            from .cuda_graphs import enable_cuda_graphs

            enable_cuda_graphs(model)


@dataclass(frozen=True)
class BlockShape:
    """What a static-shape block graph is specialised on: the batch, the video tokens, the text (and image) tokens."""

    batch: int
    tokens: int
    text_tokens: int
    image_tokens: int = 0

    def __str__(self) -> str:
        image = f" + {self.image_tokens} image tokens" if self.image_tokens else ""
        return f"batch {self.batch} x {self.tokens} video tokens x {self.text_tokens} text tokens{image}"


class CompiledBlocks:
    """What ``compile_blocks`` leaves on a model (``model.compiled``): the config and the block input shapes met
    so far. ``WanModel.run_blocks`` reports each block-stack input; a shape not met before is one more
    compilation (with static shapes), announced in one log line."""

    def __init__(self, config: CompileConfig, num_blocks: int, described: str) -> None:
        self.config = config
        self.num_blocks = num_blocks
        self.described = described
        self.shapes: list[BlockShape] = []

    def note_shapes(self, tokens: torch.Tensor, context: torch.Tensor, image: torch.Tensor | None = None) -> None:
        """Called with the block stack's input tokens [B, S, D], embedded text [B, L, D] and image tokens [B, N, D]
        (I2V / FLF2V, else None) before it runs."""
        shape = BlockShape(tokens.shape[0], tokens.shape[1], context.shape[1], 0 if image is None else image.shape[1])
        if shape in self.shapes:
            return
        self.shapes.append(shape)
        if len(self.shapes) == 1:
            log.info(
                "compiling the transformer block for %s (%s); all %d blocks share its graph",
                shape, self.described, self.num_blocks,
            )  # fmt: skip
        elif self.config.dynamic:
            log.info("new shape %s: the dynamic-shape graph takes it unless a size of 0 or 1 needs its own", shape)
        else:
            count = len(self.shapes)
            log.info("new shape %s: compiling the transformer block once more (%d shapes so far)", shape, count)


def compile_blocks(model: Any, config: CompileConfig, backend: Any | None = None) -> None:
    """Compile every block of ``model`` in place (per instance, reversible with ``uncompile_blocks``).

    ``backend`` overrides the config's backend with a callable (tests count compilations with one).
    Compilation happens on first use, for each new block input shape (``CompiledBlocks`` logs each).
    """
    kwargs = config.torch_compile_kwargs()
    if backend is not None:
        kwargs = {"backend": backend, "fullgraph": config.fullgraph, "dynamic": config.dynamic}
    for block in model.blocks:
        block.compile(**kwargs)
    described = config.describe(None if backend is None else type(backend).__name__)
    model.compiled = CompiledBlocks(config, len(model.blocks), described)
    log.info("%d transformer blocks compile on first use (%s)", len(model.blocks), described)


def uncompile_blocks(model: Any) -> None:
    for block in model.blocks:
        block._compiled_call_impl = None
    model.compiled = None
