"""The ladder's weight bytes count a tensor subclass's inner tensors (torchao's FP8 weights are wrapper subclasses:
no storage of their own, data pointer 0, so counting the wrapper by its pointer took one of them for all)."""

from __future__ import annotations

import torch
from torch import nn
from torch.testing._internal.two_tensor import TwoTensor

from dax_core.bench.ladder import _unique_bytes


def test_wrapper_subclass_weights_count_their_inner_tensors_and_shared_storage_once() -> None:
    model = nn.Module()
    model.a = nn.Linear(8, 4, bias=False)  # 32 float32: 128 bytes
    model.b = nn.Linear(8, 4, bias=False)
    model.b.weight = model.a.weight  # tied: counted once
    for i in range(3):  # three wrappers of two inner [16] float16 tensors each: 3 * 2 * 32 bytes
        inner = torch.full((16,), float(i), dtype=torch.float16)
        model.register_parameter(f"w{i}", nn.Parameter(TwoTensor(inner, inner * 2), requires_grad=False))
    model.register_buffer("steps", torch.zeros(5, dtype=torch.int64))  # 40 bytes
    assert model.w0.data_ptr() == 0  # what the count must not go by
    assert _unique_bytes(model) == 128 + 3 * 2 * 32 + 40
