"""The peer line of the ladder: diffusers' ``WanTransformer3DModel`` on the same seeded weights and inputs, stock,
then with its attention dispatcher's fastest backend here, then with torchao FP8 rowwise linears and diffusers'
regional compile (``compile_repeated_blocks``), as diffusers documents them. diffusers and torchao are optional:
without them the rungs are reported as skipped, with the reason; so are they where the installed diffusers cannot
build the variant (an image model's ``image_dim``, Wan2.2 TI2V's 48 channels), and a forward it cannot run (TI2V's
per-token timesteps in an older diffusers) is reported as failed, with its error: never replaced by something else.
An image model's peer gets the same CLIP features (``encoder_hidden_states_image``); TI2V's gets the per-frame
timestep repeated per token, as diffusers takes it."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import torch
from torch import nn

from .inputs import ForwardInputs
from .weights import build_diffusers

log = logging.getLogger(__name__)

ATTENTION_PREFERENCE = ("_flash_3", "sage", "_native_cudnn")
"""diffusers attention backends, fastest first on Hopper (FlashAttention 3, SageAttention2, cuDNN SDPA)."""


class PeerUnavailable(ImportError):
    """A package or kernel the peer rung needs is missing here (the rung is skipped)."""


def _fastest_attention(model: Any, device: torch.device) -> str:
    if device.type != "cuda":
        raise PeerUnavailable(f"diffusers' faster attention backends run on CUDA GPUs, not {device}")
    tried = []
    for name in ATTENTION_PREFERENCE:
        try:
            model.set_attention_backend(name)
        except (RuntimeError, ValueError, ImportError) as err:
            tried.append(f"{name}: {err}")
            continue
        return name
    raise PeerUnavailable("no faster diffusers attention backend is usable here (" + "; ".join(tried) + ")")


def _torchao_fp8(model: Any, device: torch.device) -> None:
    if importlib.util.find_spec("torchao") is None:
        raise PeerUnavailable("torchao is not installed (pip install torchao)")
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        raise PeerUnavailable("torchao's FP8 rowwise linears need a CUDA GPU of compute capability 8.9+")
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    def in_blocks(module: nn.Module, name: str) -> bool:  # the same layers as DAX's default keep list quantizes
        return isinstance(module, nn.Linear) and name.startswith("blocks.")

    quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=in_blocks)


def _record_compiled(ladder: Any, title: str, forward: Any, model: Any, note: str) -> None:
    """diffusers' regional compile as its docs give it (``fullgraph=True``); where dynamo cannot trace a block whole
    (SageAttention's ``sageattn`` looks the GPU's architecture up on every call, which fails at the first trace,
    seconds in), compiled again with graph breaks (``fullgraph=False``), as a diffusers user would, and said so."""
    from torch._dynamo.exc import Unsupported

    backend = ladder.settings.compile_backend
    model.compile_repeated_blocks(fullgraph=True, backend=backend)
    try:
        ladder.record_peer("peer_full", title, forward, model, f"{note}; compile_repeated_blocks(fullgraph=True)")
    except Unsupported as err:
        reason = str(err).splitlines()[0]
        log.warning("diffusers' blocks do not compile whole (%s): compiling them with graph breaks", reason)
        torch._dynamo.reset()
        model.compile_repeated_blocks(fullgraph=False, backend=backend)
        note = f"{note}; compile_repeated_blocks(fullgraph=False): with fullgraph=True dynamo stopped at {reason!r}"
        ladder.record_peer("peer_full", title, forward, model, note)


def _build(settings: Any) -> Any:
    try:
        return build_diffusers(settings.case.spec, settings.device, settings.dtype, settings.seed)
    except (TypeError, KeyError) as err:  # a config argument or a parameter this diffusers does not have
        import diffusers

        raise PeerUnavailable(
            f"diffusers {diffusers.__version__} cannot build WanTransformer3DModel for a {settings.case.spec.name} "
            f"model ({type(err).__name__}: {err}); upgrade diffusers"
        ) from err


def run_peer(ladder: Any, inputs: ForwardInputs) -> None:
    """Add the peer rungs to ``ladder`` (a ``Ladder`` whose stock rung ran), freeing the model at the end."""
    s = ladder.settings
    titles = {
        "peer_stock": "peer: diffusers, bf16, default SDPA, eager",
        "peer_attention": "peer: + fastest attention backend",
        "peer_full": "peer: + torchao FP8 rowwise + regional compile",
    }
    if importlib.util.find_spec("diffusers") is None:
        for key, title in titles.items():
            ladder.skip_peer(key, title, PeerUnavailable("diffusers is not installed (pip install diffusers)"))
        return
    try:
        model = _build(s)
    except PeerUnavailable as err:
        for key, title in titles.items():
            ladder.skip_peer(key, title, err)
        return

    def forward(model: Any = model) -> torch.Tensor:
        return inputs.diffusers(model, s.dtype)

    try:
        try:
            ladder.record_peer("peer_stock", titles["peer_stock"], forward, model, "diffusers defaults")
        except Exception as err:  # reported; nothing to build on
            ladder.skip_peer("peer_stock", titles["peer_stock"], err)
            return
        backend = None
        try:
            backend = _fastest_attention(model, s.device)
            ladder.record_peer("peer_attention", titles["peer_attention"], forward, model, f"backend {backend}")
        except Exception as err:  # reported, and the line goes on on diffusers' default attention
            ladder.skip_peer("peer_attention", titles["peer_attention"], err)
            if backend is not None:  # set, but its forward failed (a variant's attention it does not take)
                model.reset_attention_backend()
                backend = None
        try:
            _torchao_fp8(model, s.device)
            note = "torchao Float8DynamicActivationFloat8WeightConfig(PerRow) on the blocks' linears, attention " + (
                f"backend {backend}" if backend else "diffusers' default"
            )
            _record_compiled(ladder, titles["peer_full"], forward, model, note)
        except Exception as err:  # reported
            ladder.skip_peer("peer_full", titles["peer_full"], err)
    finally:
        del model
