"""The ladder's dense floor times the attention the model calls: an attention kernel the model hands its projections
(``BoundAttention.prepared``, its preparation fused into the norms) alone on inputs prepared once, outside the timing,
as the GEMMs are timed on ready-quantized inputs; any other attention function as it is, on q, k, v."""

from __future__ import annotations

import dataclasses

import torch

from dax_core.attention import bind_attention
from dax_core.attention.sage_prepared import FusedSageInputs
from dax_core.bench.cases import TEXT_TOKENS, case_for
from dax_core.bench.ceilings import WARMUP, measure_floor
from dax_core.bench.weights import build_model

REPS = 1


@dataclasses.dataclass
class _Counting:
    """FusedSageInputs (its ops' CPU definitions) counting the calls of each of its methods the floor makes."""

    inner: FusedSageInputs
    calls: dict[str, int] = dataclasses.field(default_factory=dict)

    def __getattr__(self, name: str):
        method = getattr(self.inner, name)

        def counted(*args):
            self.calls[name] = self.calls.get(name, 0) + 1
            return method(*args)

        return counted


def _refused(q, k, v, scale=None):
    raise AssertionError("the floor ran the attention function that prepares its own inputs")


@torch.inference_mode()
def test_a_prepared_attention_kernel_is_timed_alone_on_inputs_prepared_once():
    case = case_for("tiny")
    model = build_model(case.spec, "cpu", torch.bfloat16, seed=0)
    sdpa = bind_attention("sdpa", "cpu", torch.bfloat16)
    prepared = _Counting(FusedSageInputs(torch.bfloat16))
    model.set_attention(dataclasses.replace(sdpa, run=_refused, prepared=prepared))
    floor = measure_floor(model, case, torch.device("cpu"), reps=REPS)
    # one preparation per attention (self, cross), then only the kernel: in the warm-up and the timed calls, then
    # once per block in the sequence of every kernel back to back
    layers = case.spec.num_layers
    assert prepared.calls == {"query": 2, "key": 2, "value": 2, "attend": 2 * (WARMUP + REPS + layers)}
    assert floor["kernels"]["self_attention"]["s"] > 0 and floor["kernels"]["cross_attention"]["s"] > 0


@torch.inference_mode()
def test_an_attention_function_without_a_fused_preparation_is_timed_as_the_model_calls_it():
    case = case_for("tiny")
    model = build_model(case.spec, "cpu", torch.bfloat16, seed=0)
    sdpa = bind_attention("sdpa", "cpu", torch.bfloat16)
    shapes = []

    def run(q, k, v, scale=None):
        shapes.append((tuple(q.shape), tuple(k.shape)))
        return sdpa.run(q, k, v, scale)

    model.set_attention(dataclasses.replace(sdpa, run=run))
    measure_floor(model, case, torch.device("cpu"), reps=REPS)
    h, d = case.spec.num_heads, case.spec.head_dim
    video, text = (1, case.tokens, h, d), (1, TEXT_TOKENS, h, d)
    per_kernel = [(video, video)] * (WARMUP + REPS) + [(video, text)] * (WARMUP + REPS)
    assert shapes == per_kernel + [(video, video), (video, text)] * case.spec.num_layers
