"""Moving a built model's weights to host memory and back, in place, so that two Wan2.2 experts can share one GPU.

Every tensor the model holds (parameters, buffers, and the plain tensor attributes of its modules, e.g. an FP8
linear's scales) keeps its identity: only its storage moves (``tensor.data``), so a compiled block, the attention
setup and every reference to a parameter stay valid across a swap. The host copy is made once, in pinned memory on
CUDA (the copy back then runs at the link's speed), and kept: the weights of a built expert never change (LoRAs are
merged before it is built). A model replayed as CUDA graphs cannot move (the graphs hold its weights' addresses).
"""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

log = logging.getLogger(__name__)


def model_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Every distinct tensor ``model`` holds: parameters, buffers and tensor attributes of its modules."""
    seen: dict[int, torch.Tensor] = {}
    for module in model.modules():
        held = [*module._parameters.values(), *module._buffers.values()]
        held += [v for k, v in vars(module).items() if isinstance(v, torch.Tensor) and not k.startswith("_")]
        for tensor in held:
            if tensor is not None:
                seen.setdefault(id(tensor), tensor)
    return list(seen.values())


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of every tensor ``model`` holds."""
    return sum(t.numel() * t.element_size() for t in model_tensors(model))


class HostOffload:
    """One model's weights, resident on ``device`` or offloaded to host memory (``offload`` / ``load``)."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        if getattr(model, "block_graphs", None) is not None:
            raise ValueError(
                "a model replayed as CUDA graphs cannot leave the GPU (the graphs hold its weights' addresses): turn "
                "Compile's cuda_graphs off, or use a GPU where both experts fit"
            )
        self.model = model
        self.device = torch.device(device)
        self._tensors = model_tensors(model)
        self._host: list[torch.Tensor] | None = None
        self.resident = True
        self.bytes = sum(t.numel() * t.element_size() for t in self._tensors)

    def offload(self) -> float:
        """Move the weights to host memory (pinned on CUDA); the seconds it took. The GPU memory is released."""
        if not self.resident:
            return 0.0
        start = time.perf_counter()
        if self._host is None:
            pin = self.device.type == "cuda"
            self._host = [_host_copy(t, pin) for t in self._tensors]
        for tensor, host in zip(self._tensors, self._host, strict=True):
            tensor.data = host
        self.resident = False
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return time.perf_counter() - start

    def load(self) -> float:
        """Copy the weights back to the device; the seconds it took (synchronized)."""
        if self.resident:
            return 0.0
        assert self._host is not None
        start = time.perf_counter()
        for tensor, host in zip(self._tensors, self._host, strict=True):
            tensor.data = host.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.resident = True
        return time.perf_counter() - start


def _host_copy(tensor: torch.Tensor, pin: bool) -> torch.Tensor:
    host = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=pin)
    host.copy_(tensor.detach())
    return host
