"""Sequence parallelism for one WanModel instance: enable, the per-instance plan, disable.

After ``enable_sequence_parallel`` every rank calls ``model(x, t, context)`` with the same full inputs.
Each rank embeds the whole latent, keeps its slice of the video tokens (padded to a multiple of the
number of slices, RoPE tables sliced alike), runs the blocks on that slice with self-attention
exchanged across ranks, and the head's output is gathered once at the end, so every rank returns the
full result. Text tokens are not split: cross-attention is local to each slice.

A block-sparse self-attention (radial attention) runs unchanged under Ulysses, which attends whole sequences; its
mask is the same for every head, so a rank's heads need no slice of it. Under ring attention the slices are made a
whole number of the mask's blocks, each chunk is attended with the window of the mask that covers it, and a chunk
the mask leaves empty is skipped.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed import ProcessGroup

from ..attention import AttentionFn
from ..attention.block_sparse_attention import BlockSparseSelfAttention
from ..models.wan import WanAttention, WanModel
from ..rules import step_cache_refused
from .collectives import all_gather, all_reduce
from .config import ParallelConfig
from .groups import ParallelGroups, build_groups
from .lse_attention import LseAttentionFn, attention_with_lse
from .ring import ChunkAttention, ring_attention
from .ulysses import Rope, ulysses_overlapped, ulysses_plain

log = logging.getLogger(__name__)


class SequenceParallel:
    """The sequence-parallel plan installed on one model (``model.sequence_parallel``)."""

    def __init__(
        self,
        config: ParallelConfig,
        groups: ParallelGroups,
        lse_fn: LseAttentionFn = attention_with_lse,
        token_alignment: int = 1,
    ):
        self.config = config
        self.groups = groups
        self.lse_fn = lse_fn
        self.token_alignment = token_alignment
        """Each slice holds a multiple of this many tokens (a block-sparse mask's block under ring attention)."""
        self._tokens: int | None = None  # real video tokens of the forward in progress (set by shard_tokens)
        self._slice: tuple[int, int] = (0, 0)  # (start, length) of this rank's tokens in that forward
        self._rope_shards: dict[tuple, Rope] = {}

    @property
    def rank(self) -> int:
        """This rank in the parallel group."""
        return self.groups.parent.rank

    # -- the model's seams -------------------------------------------------------------------------------

    def split_batch(
        self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """With CFG-parallel, this rank's guidance branch: the first or second half of the batch."""
        if not self.config.cfg_parallel:
            return x, t, context
        batch = x.shape[0]
        if batch % 2:
            raise ValueError(
                f"CFG-parallel splits the batch into two halves, one per half of the GPUs, but the batch is {batch}: "
                "give the model both guidance branches in one batch (WanEngine does when cfg is not 1 and both text "
                "embeddings have the same length) or an even batch, or turn cfg_parallel off"
            )
        return self.split_rows(x, batch), self.split_rows(t, batch), self.split_rows(context, batch)

    def split_rows(self, rows: torch.Tensor, batch: int) -> torch.Tensor:
        """This rank's rows of a per-sample input of a ``batch``-row forward (with CFG-parallel, its guidance
        branch's half; a single row shared by every sample stays as it is)."""
        if not self.config.cfg_parallel or rows.shape[0] != batch:
            return rows
        half = slice(self.groups.cfg_index * batch // 2, (self.groups.cfg_index + 1) * batch // 2)
        return rows[half]

    def shard_tokens(self, tokens: torch.Tensor, rope: Rope, grid: tuple[int, int, int]) -> tuple[torch.Tensor, Rope]:
        """This rank's slice of the tokens [B, S, D] and of the RoPE tables, padded to equal slices."""
        total = tokens.shape[1]
        size = math.ceil(total / self.config.sequence_degree / self.token_alignment) * self.token_alignment
        start = self.groups.shard_index * size
        self._tokens, self._slice = total, (start, size)
        return self.shard_per_token(tokens), self._rope_shard(rope, grid, start, size)

    def shard_per_token(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's slice of per-token values [B, S, ...] (the tokens', or their per-token time embedding), padded
        as ``shard_tokens`` pads the tokens (padding rows are zero: they are never attended to and are dropped)."""
        if self._tokens is None:
            raise RuntimeError("shard_per_token runs inside WanModel.prepare, after shard_tokens")
        start, size = self._slice
        local = rows[:, start : start + size]
        pad = [0, 0] * (rows.ndim - 2) + [0, size - local.shape[1]]
        return F.pad(local, pad).contiguous()

    def self_attention(self, attn: WanAttention, x: torch.Tensor, rope: Rope, kernel: AttentionFn) -> torch.Tensor:
        """Self-attention of this rank's tokens against the whole video; ``kernel`` is the model's own
        attention backend, used wherever no log-sum-exp is needed (everything but the ring)."""
        if self._tokens is None:
            raise RuntimeError("sequence-parallel self-attention runs inside WanModel.forward (prepare shards first)")
        slice_len = x.shape[1]
        chunk = self.config.ulysses * slice_len  # tokens a ring member holds after the Ulysses exchange
        valid = [max(0, min(chunk, self._tokens - m * chunk)) for m in range(self.config.ring)]

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            if self.groups.ring is not None:
                chunks = self._chunk_attention(kernel, chunk)
                return ring_attention(q, k, v, self.groups.ring, valid, chunks, self.config.overlap)
            if valid[0] < k.shape[1]:  # drop the padding keys
                k, v = k[:, : valid[0]], v[:, : valid[0]]
            return kernel(q, k, v)

        if self.groups.ulysses is None:
            out = attend(attn.query(x, rope), attn.key(x, rope), attn.value(x))
            return attn.o(out.flatten(2))
        schedule = ulysses_overlapped if self.config.overlap else ulysses_plain
        return schedule(attn, x, rope, self.groups.ulysses, attend)

    def gather_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's [B_local, slice, C] -> the whole [B, S, C], padding removed, on every rank."""
        if self._tokens is None:
            raise RuntimeError("gather_tokens runs at the end of WanModel.forward (prepare shards first)")
        parent = self.groups.parent
        if parent.size > 1:
            b, s, c = x.shape
            x = all_gather(x, parent).wait()  # parent rank order: (cfg branch, token slice)
            x = x.view(self.config.cfg_degree, self.config.sequence_degree, b, s, c).transpose(1, 2)
            x = x.reshape(self.config.cfg_degree * b, self.config.sequence_degree * s, c)
        return x[:, : self._tokens]

    def _chunk_attention(self, kernel: AttentionFn, chunk: int) -> ChunkAttention:
        """How this rank's queries attend one ring member's chunk: the block-sparse kernel's window of its mask,
        or the plain log-sum-exp attention."""
        if isinstance(kernel, BlockSparseSelfAttention):
            assert self.groups.ring is not None
            q_start = self.groups.ring.rank * chunk
            return lambda source, q, k, v: kernel.chunk_with_lse(q, k, v, q_start, source * chunk)
        return lambda source, q, k, v: self.lse_fn(q, k, v)

    # -- for other accelerations -------------------------------------------------------------------------

    def all_reduce(self, x: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Reduce ``x`` over every rank of the group, for decisions all ranks must share (a step cache's
        distance is a sum over all tokens and both guidance branches)."""
        if self.groups.parent.size == 1:
            return x
        return all_reduce(x, self.groups.parent, op).wait()

    # -- internals ---------------------------------------------------------------------------------------

    def _rope_shard(self, rope: Rope, grid: tuple[int, int, int], start: int, size: int) -> Rope:
        cos, sin = rope
        key = (grid, str(cos.device))
        if key not in self._rope_shards:
            self._rope_shards.clear()  # one resolution at a time, as the model's own cache
            cos, sin = cos[start : start + size], sin[start : start + size]
            pad = (0, 0, 0, size - cos.shape[0])
            # padded positions get the identity rotation (cos 1, sin 0); their keys are never attended to
            self._rope_shards[key] = (F.pad(cos, pad, value=1.0).contiguous(), F.pad(sin, pad, value=0.0).contiguous())
        return self._rope_shards[key]

    def close(self) -> None:
        """Destroy the sub-groups made for this plan."""
        self.groups.close()


def enable_sequence_parallel(
    model: WanModel, config: ParallelConfig, group: ProcessGroup | None = None
) -> SequenceParallel:
    """Split ``model``'s forward over the ranks of ``group`` (default: the whole world) as ``config`` says.

    Every rank of the group must call this, then call the model with the same full inputs; each gets the
    full output. Collective: all ranks must enable, run and disable together.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("sequence parallelism needs torch.distributed initialised (init_process_group) first")
    if model.sequence_parallel is not None:
        raise RuntimeError("sequence parallelism is already enabled on this model; call disable_sequence_parallel")
    config.validate_for(model.spec)
    _check_token_local(model)
    if config.cfg_parallel and model.step_cache is not None:
        raise ValueError(step_cache_refused())
    schedule = model.self_attention_schedule
    alignment = 1
    if schedule is not None and config.ring > 1:
        schedule.check_ring()
        alignment = schedule.token_alignment
    groups = build_groups(config, group if group is not None else dist.group.WORLD)
    plan = SequenceParallel(config, groups, token_alignment=alignment)
    model.sequence_parallel = plan
    log.info("sequence parallel on rank %d: %s (token slice %d)", plan.rank, config.describe(), groups.shard_index)
    return plan


def _check_token_local(model: WanModel) -> None:
    """Refuse layers that declare ``token_local = False``: their output for one token depends on the other tokens
    of their input (a per-tensor activation scale), so on this rank's slice they would compute something else."""
    coupled = [name for name, m in model.named_modules() if not getattr(m, "token_local", True)]
    if coupled:
        more = f" and {len(coupled) - 1} more layers" if len(coupled) > 1 else ""
        raise ValueError(
            f"{coupled[0]}{more} compute each token's output from every token of their input (per-tensor "
            "activation scales): on a slice of the tokens they would compute something else than on one GPU; "
            "quantize with per-token-per-channel scales to split the sequence"
        )


def disable_sequence_parallel(model: WanModel) -> None:
    """Restore the single-process forward of ``model`` and free the plan's sub-groups (collective)."""
    plan = model.sequence_parallel
    if plan is None:
        return
    model.sequence_parallel = None
    if isinstance(plan, SequenceParallel):
        plan.close()
