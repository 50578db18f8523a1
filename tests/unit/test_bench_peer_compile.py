"""The peer's regional compile: whole blocks where dynamo traces them, graph breaks where it cannot, and the note says
which (a real ``torch.compile`` on CPU, eager backend, over a stand-in with diffusers' ``compile_repeated_blocks``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dax_core.bench.peer import _record_compiled


class Block(nn.Module):
    def __init__(self, asks_the_gpu: bool) -> None:
        super().__init__()
        self.asks_the_gpu = asks_the_gpu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.asks_the_gpu:  # as sageattn does on every call: a torch.* call dynamo cannot put in a graph
            x = x + torch.cuda.device_count()
        return x * 2


class Model(nn.Module):
    def __init__(self, asks_the_gpu: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(asks_the_gpu) for _ in range(2)])
        self.fullgraph: list[bool] = []

    def compile_repeated_blocks(self, fullgraph: bool, backend: str) -> None:  # what diffusers' does
        self.fullgraph.append(fullgraph)
        for block in self.blocks:
            block.compile(fullgraph=fullgraph, backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class Ladder:
    def __init__(self) -> None:
        self.settings = SimpleNamespace(compile_backend="eager")
        self.recorded: list[tuple[str, torch.Tensor]] = []

    def record_peer(self, key: str, title: str, forward, model, note: str) -> None:
        self.recorded.append((note, forward()))


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("asks_the_gpu", [False, True])
def test_blocks_compile_whole_where_they_trace_and_with_graph_breaks_where_not(asks_the_gpu: bool) -> None:
    model, ladder, x = Model(asks_the_gpu), Ladder(), torch.arange(3.0)
    _record_compiled(ladder, "peer_full", lambda: model(x), model, "torchao")
    ((note, out),) = ladder.recorded
    added = torch.cuda.device_count() if asks_the_gpu else 0
    assert torch.equal(out, ((x + added) * 2 + added) * 2)
    if asks_the_gpu:
        assert model.fullgraph == [True, False]
        assert "fullgraph=False" in note and "torch.* op returned non-Tensor" in note
    else:
        assert model.fullgraph == [True]
        assert note.endswith("compile_repeated_blocks(fullgraph=True)")
