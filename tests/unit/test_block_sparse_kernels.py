"""Block-sparse kernels on the CPU: the reference kernel against float64 masked softmax, FlexAttention's block mask
through PyTorch's compiled CPU kernel, SpargeAttn's tile expansion, and the ring chunks of one video's attention."""

from __future__ import annotations

import pytest
import torch

from dax_core.attention.block_sparse import bind_block_sparse, kernel_names
from dax_core.attention.block_sparse_attention import BlockSparseSelfAttention
from dax_core.attention.block_sparse_flex import block_mask
from dax_core.attention.block_sparse_sage import tile_table
from dax_core.attention.block_table import BlockTable
from dax_core.attention.registry import BackendUnavailable
from dax_core.parallel.lse_attention import merge_partial
from tests.numerics import rel_error

# float32 logits, softmax and weighted sums over at most 64 keys: relative error of order 1e-7; a pair attended
# that the mask excludes (or the reverse) moves the output by O(1) of its scale.
F32_TOL = 1e-5
BLOCK = 8


def masked_f64(q, k, v, mask: torch.Tensor):
    """(out, lse) of softmax attention restricted to ``mask`` [S_q, S_k], in float64; a row with no key: 0, -inf."""
    qd, kd, vd = (x.double().transpose(1, 2) for x in (q, k, v))
    logits = (qd @ kd.transpose(-1, -2)) * q.shape[-1] ** -0.5
    logits = logits.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)
    weights = torch.where(mask, torch.exp(logits - lse.nan_to_num(neginf=0.0).unsqueeze(-1)), 0.0)
    return (weights @ vd).transpose(1, 2), lse


def qkv(b, s_q, s_k, h=3, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, s_q, h, d, generator=g) * 2.0
    return q, torch.randn(b, s_k, h, d, generator=g), torch.randn(b, s_k, h, d, generator=g)


def random_table(tokens: int, block: int, seed: int = 0, density: float = 0.4) -> BlockTable:
    g = torch.Generator().manual_seed(seed)
    blocks = -(-tokens // block)
    table = torch.rand(blocks, blocks, generator=g) < density
    table[1] = False  # a query block with no key: zero output, lse -inf
    return BlockTable.of(table, tokens, block, "cpu")


def test_reference_kernel_equals_float64_masked_softmax():
    tokens = 37  # not a multiple of the block
    table = random_table(tokens, BLOCK)
    q, k, v = qkv(2, tokens, tokens)
    kernel = bind_block_sparse("reference", "cpu", torch.float32, BLOCK)
    out, lse = kernel.run_lse(q, k, v, table.window(0, tokens, 0, tokens), BLOCK, None)
    expected, expected_lse = masked_f64(q, k, v, table.token_mask())
    assert out.shape == q.shape and lse.shape == (2, 3, tokens) and lse.dtype == torch.float32
    assert rel_error(out, expected) < F32_TOL
    rows = table.token_mask().any(dim=1)
    assert (out[:, ~rows] == 0).all() and torch.isneginf(lse[..., ~rows]).all()
    assert (lse[..., rows].double() - expected_lse[..., rows]).abs().max() < F32_TOL
    same = kernel.run(q, k, v, table.window(0, tokens, 0, tokens), BLOCK, None)
    assert torch.equal(same, out) and same.is_contiguous()


def test_a_full_table_is_dense_attention():
    tokens = 29
    full = BlockTable.of(torch.ones(4, 4, dtype=torch.bool), tokens, BLOCK, "cpu")
    q, k, v = qkv(1, tokens, tokens, seed=1)
    out = bind_block_sparse("reference", "cpu", torch.float32, BLOCK).run(q, k, v, full.table, BLOCK, None)
    dense = torch.nn.functional.scaled_dot_product_attention(*(x.double().transpose(1, 2) for x in (q, k, v)))
    assert full.density == 1.0
    assert rel_error(out, dense.transpose(1, 2)) < F32_TOL


def test_padded_queries_attend_the_first_key_block():
    tokens, padded = 37, 48
    table = random_table(tokens, BLOCK, seed=2)
    q, k, v = qkv(1, padded, tokens, seed=2)
    window = table.window(0, padded, 0, tokens)
    out = bind_block_sparse("reference", "cpu", torch.float32, BLOCK).run(q, k, v, window, BLOCK, None)
    mask = torch.zeros(padded, tokens, dtype=torch.bool)
    mask[:tokens] = table.token_mask()
    mask[40:, :BLOCK] = True  # the fully padded query block: key block 0 only
    mask[tokens:40] = table.token_mask()[tokens - 1]  # padding inside the last real block: that block's keys
    assert rel_error(out, masked_f64(q, k, v, mask)[0]) < F32_TOL


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_block_mask_runs_the_same_blocks_in_pytorchs_compiled_kernel(fresh_dynamo):
    """The block mask's indices (what the GPU kernel iterates) through PyTorch's compiled CPU FlexAttention, which
    skips blocks as the GPU kernel does (it takes no log-sum-exp on the CPU); eager FlexAttention reads the mask
    function instead. A wrong index list computes other blocks and fails by O(1)."""
    from torch.nn.attention.flex_attention import flex_attention

    tokens, block = 300, 64
    host = random_table(tokens, block, seed=3, density=0.5).host
    host.fill_diagonal_(True)  # every query block attends something: empty rows are the reference kernel's test
    table = BlockTable.of(host, tokens, block, "cpu")
    q, k, v = qkv(1, tokens, tokens, h=2, seed=3)
    mask = block_mask(table.table, block, tokens, tokens)
    expected = masked_f64(q, k, v, table.token_mask())[0]
    args = (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    compiled = torch.compile(flex_attention, dynamic=False, fullgraph=True)(*args, block_mask=mask).transpose(1, 2)
    assert rel_error(compiled, expected) < F32_TOL
    eager = flex_attention(*args, block_mask=mask).transpose(1, 2)
    assert rel_error(eager, expected) < F32_TOL


@pytest.mark.parametrize("tiles", [(64, 128), (128, 64)], ids=["hopper", "ampere-ada"])
def test_sparge_tiles_compute_the_pairs_of_the_blocks(tiles):
    tokens, block = 1000, 128
    table = random_table(tokens, block, seed=4)
    for q_len in (tokens, 1100):  # the whole video; with padded queries (Ulysses)
        window = table.window(0, q_len, 0, tokens)
        tiled = tile_table(window, block, tiles, q_len, tokens)
        assert tiled.dtype == torch.int8 and tiled.shape == (-(-q_len // tiles[0]), -(-tokens // tiles[1]))
        as_tokens = tiled.bool().repeat_interleave(tiles[0], 0).repeat_interleave(tiles[1], 1)[:q_len, :tokens]
        expected = window.repeat_interleave(block, 0).repeat_interleave(block, 1)[:q_len, :tokens]
        assert torch.equal(as_tokens, expected)


def test_kernels_bind_where_they_run_and_say_why_not():
    assert kernel_names() == ["auto", "sparge", "flex", "reference"]
    assert bind_block_sparse("auto", "cpu", torch.float32, BLOCK).name == "reference"
    with pytest.raises(BackendUnavailable, match=r"CUDA|spas_sage_attn"):
        bind_block_sparse("sparge", "cpu", torch.bfloat16, 128)
    with pytest.raises(BackendUnavailable, match="flex kernel is for CUDA GPUs"):
        bind_block_sparse("flex", "cpu", torch.bfloat16, 128)
    with pytest.raises(BackendUnavailable, match="unknown block-sparse kernel 'dense'"):
        bind_block_sparse("dense", "cpu", torch.float32, 128)


def test_ring_chunks_merged_equal_the_whole_sequence_and_empty_chunks_are_skipped():
    """One video's attention cut as ring attention cuts it: 2 query slices x 3 key slices of whole blocks. Each
    chunk through ``chunk_with_lse``, merged by log-sum-exp, equals the whole-sequence call; a chunk whose window
    is empty is skipped (None), and a query row a chunk gives nothing stays finite after the merge."""
    tokens, chunk = 45, 16  # slices of two blocks; the last key slice holds 13 real keys
    host = random_table(tokens, BLOCK, seed=5).host
    host[1] = torch.tensor([True, False, False, False, True, False])  # row 1 only meets slices 0 and 2
    host[:2, 2:4] = False  # so slice 1 has nothing for the query slice 0
    table = BlockTable.of(host, tokens, BLOCK, "cpu")
    kernel = bind_block_sparse("reference", "cpu", torch.float32, BLOCK)
    attention = BlockSparseSelfAttention(table, kernel, kernel)
    q, k, v = qkv(2, 2 * chunk, tokens, seed=5)  # the queries of two slices, the keys of three
    whole = attention(q, k, v)
    for q_slice in range(2):
        rows = slice(q_slice * chunk, (q_slice + 1) * chunk)
        acc = acc_lse = None
        for k_slice in range(3):
            keys = slice(k_slice * chunk, min((k_slice + 1) * chunk, tokens))
            part = attention.chunk_with_lse(q[:, rows], k[:, keys], v[:, keys], rows.start, keys.start)
            if q_slice == 0 and k_slice == 1:
                assert part is None
            if part is not None:
                acc, acc_lse = merge_partial(acc, acc_lse, *part)
        assert torch.isfinite(acc).all()
        assert rel_error(acc, whole[:, rows]) < F32_TOL
    assert attention.chunks == {"computed": 5, "skipped": 1}
