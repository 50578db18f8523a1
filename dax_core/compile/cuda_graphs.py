"""CUDA graphs of the block stack: captured once per input shape, then replayed with no Python and no launch gaps.

A small model spends much of a forward outside its GEMMs and attention: Python, the dispatcher, torch.compile's
guards and one launch per kernel (Wan 1.3B at 480p: about a quarter). A graph records the launches of the whole
block stack once and replays them as one.

- Capture per shape: the block-stack inputs (tokens, time projection, text, rotary tables) are copied into static
  buffers the graph reads, and its output is copied out, so the caller owns what it gets. A new shape (resolution,
  frames, batch, text length) captures once more; the graphs share one memory pool.
- Invalidated when what they baked in changes: the attention kernels, or any tensor of the blocks (a quantization,
  a LoRA that replaces weights): the next call captures again. Weights changed in place are read as they are.
- With torch.compile: the first call at a shape runs the compiled blocks once (compiling them), then captures the
  compiled kernels. Graphs replace what ``mode="reduce-overhead"`` would do, for the whole stack at once.
- With a step cache: the cache runs outside the graph (``WanModel.run_blocks`` is what it calls); a step whose CFG
  branches disagree runs the stack on one row, a shape of its own, captured once.
- Not with sequence parallelism (its collectives run outside CUDA's capture: one GPU only), not with attention
  kernels that launch outside PyTorch's current stream (SageAttention2's CUDA kernels use CUDA's legacy default
  stream: a capture would not record them, and replays would skip them), and not with radial attention (its
  kernels change from step to step). All are refused before any capture.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch

from ..recipe import RecipeError

log = logging.getLogger(__name__)


class GraphCapture(Protocol):
    """Records ``fn`` (after ``warmup`` plain calls) and returns (replay, the output buffer the replay refills)."""

    def __call__(self, fn: Callable[[], torch.Tensor], warmup: int) -> tuple[Callable[[], None], torch.Tensor]: ...


class CudaGraphCapture:
    """``torch.cuda.CUDAGraph`` capture, warm-up on a side stream first; every graph of one model shares a pool."""

    def __init__(self) -> None:
        self.pool: Any = None

    def __call__(self, fn: Callable[[], torch.Tensor], warmup: int) -> tuple[Callable[[], None], torch.Tensor]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # lazy initialisations (and compilation) happen outside the capture
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = fn()
        return graph.replay, out


@dataclass
class _Graph:
    inputs: Any  # the Prepared whose tensors the graph reads
    replay: Callable[[], None]
    output: torch.Tensor


class BlockGraphs:
    """The CUDA graphs of one model's block stack (``model.block_graphs``), one per input shape."""

    def __init__(self, model: Any, capture: GraphCapture | None = None, warmup: int = 1) -> None:
        if getattr(model, "sequence_parallel", None) is not None:
            raise RuntimeError(
                "CUDA graphs need the whole forward on one GPU; this model runs sequence-parallel (its collectives "
                "run outside a graph): turn cuda_graphs off in the Compile node, or run on one GPU"
            )
        self.model = model
        self.capture = capture or CudaGraphCapture()
        self.warmup = warmup
        self.graphs: dict[tuple, _Graph] = {}
        self._baked: tuple = ()
        self.captures = 0

    def _weights(self) -> tuple:
        """What the graphs read of the blocks, by address: changed when a tensor is replaced."""
        tensors = (*self.model.blocks.parameters(), *self.model.blocks.buffers())
        return tuple((t.data_ptr(), t.dtype, tuple(t.shape)) for t in tensors)

    @staticmethod
    def _inputs(p: Any) -> tuple[torch.Tensor, ...]:
        """The tensors of ``p`` a graph reads: tokens, time projection, text, rotary tables, image tokens (if any)."""
        image = () if p.image is None else (p.image,)
        return (p.tokens, p.e0, p.context, *p.rope, *image)

    def _key(self, p: Any) -> tuple:
        shapes = tuple((tuple(t.shape), t.dtype) for t in self._inputs(p))
        return (shapes, id(self.model.self_attn_fn), id(self.model.cross_attn_fn))

    def clear(self) -> None:
        """Forget every graph (their memory is freed with them)."""
        self.graphs.clear()
        self._baked = ()

    def run(self, p: Any) -> torch.Tensor:
        """The block stack's output for ``p`` (a ``Prepared``), from the graph of its shape (captured if new)."""
        if self.model.sequence_parallel is not None:
            raise RuntimeError("CUDA graphs are on, and the model runs sequence-parallel: turn one of them off")
        weights = self._weights()
        if weights != self._baked:
            if self.graphs:
                log.info("the blocks' weights changed: the CUDA graphs are captured again")
            self.clear()
            self._baked = weights
        key = self._key(p)
        graph = self.graphs.get(key)
        if graph is None:
            check_capturable(self.model)  # the attention kernels may have been set after enable_cuda_graphs
            graph = self.graphs[key] = self._record(p)
        else:
            inputs = graph.inputs
            for static, new in zip(self._inputs(inputs), self._inputs(p), strict=True):
                static.copy_(new)
        graph.replay()
        return graph.output.clone()

    def _record(self, p: Any) -> _Graph:
        inputs = replace(
            p, tokens=p.tokens.clone(), e0=p.e0.clone(), context=p.context.clone(),
            rope=(p.rope[0].clone(), p.rope[1].clone()), image=None if p.image is None else p.image.clone(),
        )  # fmt: skip
        log.info(
            "capturing the block stack as a CUDA graph for batch %d x %d tokens x %d text tokens",
            *p.tokens.shape[:2], p.context.shape[1],
        )  # fmt: skip
        try:
            replay, output = self.capture(lambda: self.model.run_block_stack(inputs), self.warmup)
        except Exception as err:
            raise RuntimeError(
                f"capturing the block stack as a CUDA graph failed ({type(err).__name__}: {err}); a kernel of this "
                "recipe cannot run inside a graph: turn cuda_graphs off in the Compile node"
            ) from err
        self.captures += 1
        return _Graph(inputs, replay, output)


def check_capturable(model: Any) -> None:
    """Raise unless every attention kernel of ``model`` can be recorded in a CUDA graph."""
    if getattr(model, "self_attention_schedule", None) is not None:
        raise RecipeError(
            "CUDA graphs replay the kernels they captured, and radial attention changes the self-attention kernels "
            "from step to step (dense first steps): turn cuda_graphs off in the Compile node, or drop radial attention"
        )
    for role, fn in (("self-attention", model.self_attn_fn), ("cross-attention", model.cross_attn_fn)):
        if not getattr(fn, "capturable", True):
            raise RecipeError(
                f"CUDA graphs cannot record the {role} kernel, {getattr(fn, 'kernel', fn)}: it launches outside "
                "PyTorch's current stream, so a replay would skip it. Turn cuda_graphs off in the Compile node, or "
                "choose an attention backend a graph can hold (sdpa, sdpa_cudnn, flash)"
            )


def enable_cuda_graphs(model: Any, capture: GraphCapture | None = None) -> BlockGraphs:
    """Run ``model``'s block stack through CUDA graphs (per instance; ``disable_cuda_graphs`` undoes it)."""
    check_capturable(model)
    graphs = BlockGraphs(model, capture)
    model.block_graphs = graphs
    return graphs


def disable_cuda_graphs(model: Any) -> None:
    graphs = getattr(model, "block_graphs", None)
    if graphs is not None:
        graphs.clear()
    model.block_graphs = None
