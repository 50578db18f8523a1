"""The speed ladder: every acceleration of the dense stack, one rung at a time, against the same run's stock forward.

One process builds the weights once (seeded, at the model's real shapes); each rung is a model sharing them with its
accelerations applied (``share_weights``), timed on the same inputs: its first call (compilation, capture) and the
median of ``reps`` more. Per rung: seconds per forward (one CFG branch), per denoising step, the speed-up over the
stock rung, how far it is from its own dense floor (its GEMM and attention kernels timed alone, in this run),
peak memory and the relative error of its output against the stock output. The step-cache and distilled rungs take
the fastest dense rung with a stated schedule. A rung that cannot run here is reported as skipped, with the reason.
Results are written after every rung, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import gc
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from ..accelerations import BuildEnv, apply_accelerations
from ..attention.registry import BackendUnavailable
from ..compile.cuda_graphs import disable_cuda_graphs
from ..compile.regional import uncompile_blocks
from ..quant.qconfig import QuantizationError
from ..recipe import Recipe, RecipeError, acceleration_from_dict
from . import rungs as R
from .cases import Case
from .ceilings import attention_kernel, linear_scheme, measure_floor
from .inputs import ForwardInputs, make_inputs
from .step_costs import magcache_pattern, ratios_for, step_costs
from .timing import device_name, median, peak_since, reset_peak, timed
from .weights import build_model, share_weights

log = logging.getLogger(__name__)

CANNOT_RUN = (BackendUnavailable, QuantizationError, RecipeError, ImportError)
"""Errors that mean "this rung has no kernel or package here" (skipped); anything else is a failure, reported."""
GIB = 2**30


@dataclass(frozen=True)
class LadderSettings:
    case: Case
    device: torch.device
    reps: int = 2
    seed: int = 0
    only: tuple[str, ...] = ()  # rung keys to run (empty: all); "stock" always runs
    peer: bool = False
    compile_backend: str = "inductor"
    command: str = ""

    @property
    def dtype(self) -> torch.dtype:
        """bf16 on a GPU (what the product runs); float32 on the CPU, whose bf16 kernels are slow (a smoke test)."""
        return torch.bfloat16 if self.device.type == "cuda" else torch.float32

    def wants(self, key: str, on_request: bool = False) -> bool:
        """Whether to run the rung ``key``; an ``on_request`` rung runs only when named."""
        return key in self.only if on_request else not self.only or key == "stock" or key in self.only


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return ((got.double() - ref).norm() / ref.norm()).item()


def _storages(t: torch.Tensor) -> list[torch.Tensor]:
    """The tensors holding ``t``'s memory: itself, or a wrapper subclass's inner tensors (torchao's FP8 weights: the
    wrapper has no storage of its own, its data pointer is 0)."""
    if is_traceable_wrapper_subclass(t):
        names, _ = t.__tensor_flatten__()
        return [inner for name in names for inner in _storages(getattr(t, name))]
    return [t]


def _unique_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's parameters and buffers, each storage once (tied or shared tensors count once)."""
    seen: dict[int, int] = {}
    for t in (*model.parameters(), *model.buffers()):
        for inner in _storages(t):
            seen.setdefault(inner.data_ptr(), inner.numel() * inner.element_size())
    return sum(seen.values())


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass
class _Built:
    model: Any
    accelerations: list[dict]


@dataclass
class Ladder:
    """One run of the ladder; ``results`` is the JSON written after every rung (``report`` receives it)."""

    settings: LadderSettings
    report: Callable[[dict], None] = lambda results: None
    results: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = self.settings
        self.results = {
            "command": s.command,
            "device": device_name(s.device),
            "torch": torch.__version__,
            "case": s.case.name,
            "model_type": s.case.spec.model_type,
            "latent_shape": list(s.case.latent_shape),
            "tokens": s.case.tokens,
            "flops": s.case.flops(),
            "reps": s.reps,
            "steps": R.STEPS,
            "rungs": {},
            "floors": {},
            "assumptions": [
                "one forward = one CFG branch; a denoising step with CFG = two forwards (the engine batches both "
                "branches, which costs twice one at these sizes)",
                "seeded random weights at the real shapes: times do not depend on weight values",
                *(r.assumption for r in R.SCHEDULE_RUNGS if s.wants(r.key)),
                "projected times count the transformer only (no text encoder, no VAE)",
                *variant_assumptions(s.case),
            ],
        }
        self._built: dict[str, _Built] = {}
        self._stock_out: torch.Tensor | None = None

    # -- recording --------------------------------------------------------------------------------------------

    def _record(self, key: str, entry: dict) -> None:
        self.results["rungs"][key] = entry
        finish(self.results)  # so that a run cut short reports its ratios too
        self.report(self.results)

    def _skip(self, key: str, title: str, err: BaseException, accelerations: list[dict] | None = None) -> None:
        expected = isinstance(err, CANNOT_RUN)
        reason = f"{type(err).__name__}: {err}".strip().splitlines()[0]  # one line in the table; the log has the rest
        if not expected:
            log.error("rung %s failed:\n%s", key, "".join(traceback.format_exception(err))[-3000:])
        log.warning("rung %s %s: %s", key, "skipped" if expected else "FAILED", reason)
        entry = {"title": title, "status": "skipped" if expected else "failed", "reason": reason}
        if accelerations is not None:
            entry["accelerations"] = accelerations
        self._record(key, entry)

    # -- measuring --------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def _measure(self, forward: Callable[[], torch.Tensor], model: torch.nn.Module, stock: bool = False) -> dict:
        device = self.settings.device
        before = reset_peak(device)
        outputs: list[torch.Tensor] = []
        (first,) = timed(lambda: outputs.append(forward()), 1, device)
        times = timed(forward, self.settings.reps, device)
        activations = peak_since(device, before)
        out = outputs[0].float().cpu()
        weights = _unique_bytes(model)
        entry = {
            "status": "ran",
            "first_s": first,
            "times_s": times,
            "forward_s": median(times),
            "weights_gib": weights / GIB,
            "peak_gib": None if activations is None else (weights + activations) / GIB,
            "output_finite": bool(torch.isfinite(out).all()),
        }
        if stock:
            self._stock_out = out
        entry["rel_err_vs_stock"] = None if self._stock_out is None else _rel(out, self._stock_out)
        return entry

    def _floor(self, model: Any) -> str:
        key = f"{linear_scheme(model)} linears, {attention_kernel(model)}"
        if key not in self.results["floors"]:
            self.results["floors"][key] = measure_floor(model, self.settings.case, self.settings.device)
        return key

    # -- the dense rungs --------------------------------------------------------------------------------------

    def _base(self, rung: R.DenseRung, dense: dict[str, R.DenseRung]) -> str | None:
        """The nearest rung at or below ``rung.base`` that ran."""
        key = rung.base
        while key is not None and self.results["rungs"].get(key, {}).get("status") != "ran":
            key = dense[key].base
        return key

    def _build(self, rung: R.DenseRung, base_key: str | None, weights: Any) -> _Built:
        env = BuildEnv(self.settings.device)
        base_accs = [] if base_key is None else self._built[base_key].accelerations
        accelerations = [*base_accs, *rung.adds]
        if rung.in_place and base_key is not None:
            model = self._built[base_key].model  # the base rung's model becomes this rung's
            for acc in rung.adds:
                acceleration_from_dict(acc).apply(model, env)
        else:
            model = share_weights(weights)
            recipe = Recipe.from_dict({"weights": "random", "accelerations": accelerations})
            apply_accelerations(model, recipe, env)
        return _Built(model, accelerations)

    def _restore(self, base_key: str, was_compiled: bool) -> None:
        """Undo what a failed in-place rung did to its base rung's model, which the ladder goes on with."""
        model = self._built[base_key].model
        disable_cuda_graphs(model)
        if not was_compiled and model.compiled is not None:
            uncompile_blocks(model)

    def run_dense(self, weights: Any, inputs: ForwardInputs) -> None:
        dense = {r.key: r for r in R.dense_rungs(self.settings.compile_backend)}
        for rung in dense.values():
            if not self.settings.wants(rung.key, rung.on_request):
                continue
            base_key = self._base(rung, dense) if rung.base else None
            if rung.in_place and base_key is not None and base_key not in self._built:
                base_key = None  # its model was not kept: build from the weights
            accelerations = None
            in_place = rung.in_place and base_key is not None
            was_compiled = in_place and self._built[base_key].model.compiled is not None
            try:
                built = self._build(rung, base_key, weights)
                accelerations = built.accelerations
                log.info("rung %s: %s", rung.key, accelerations)
                forward = (lambda m: lambda: inputs(m))(built.model)
                entry = self._measure(forward, built.model, stock=rung.key == "stock")
                entry["floor"] = self._floor(built.model)
            except Exception as err:  # every failure is reported, and the ladder goes on
                if in_place:
                    self._restore(base_key, was_compiled)
                self._skip(rung.key, rung.title, err, accelerations)
                _free(self.settings.device)
                continue
            entry = {"title": rung.title, "accelerations": accelerations, "side": rung.side, **entry}
            self._record(rung.key, entry)
            log.info("rung %s: %.4f s per forward (first call %.2f s)", rung.key, entry["forward_s"], entry["first_s"])
            if in_place:
                del self._built[base_key]  # measured already; its model is this rung's now
            if not rung.side:  # a side rung (INT8) is an alternative: nothing builds on it
                self._built[rung.key] = built
            del built
            _free(self.settings.device)

    def best_dense(self) -> str | None:
        """The fastest rung up the ladder (not a side rung) whose model is still built."""
        ran = [(self.results["rungs"][k]["forward_s"], k) for k in self._built]
        return min(ran)[1] if ran else None

    # -- the schedule rungs -----------------------------------------------------------------------------------

    def run_schedules(self, inputs: ForwardInputs) -> None:
        best = self.best_dense()
        for rung in R.SCHEDULE_RUNGS:
            if not self.settings.wants(rung.key):
                continue
            if best is None:
                self._skip(rung.key, rung.title, RuntimeError("no dense rung ran to build on"))
                continue
            base = self.results["rungs"][best]
            entry: dict[str, Any] = {"title": rung.title, "status": "ran", "on": best,
                                     "accelerations": base["accelerations"], "assumption": rung.assumption}  # fmt: skip
            try:
                if rung.cache is None:
                    entry |= {"pattern": "C" * rung.steps, "computed_s": base["forward_s"], "skipped_s": 0.0}
                else:
                    model = self._built[best].model
                    costs = step_costs(model, inputs, self.settings.device, rung.cache, max(3, self.settings.reps))
                    entry |= costs | {"pattern": self._pattern(rung.key)}
                    entry["accelerations"] = [*base["accelerations"], {"kind": rung.cache}]
            except Exception as err:  # reported, and the ladder goes on
                self._skip(rung.key, rung.title, err)
                continue
            entry["cfg"] = rung.cfg
            entry["rel_err_vs_stock"] = base["rel_err_vs_stock"]  # of its computed steps; skipping: not measured
            self._record(rung.key, entry)

    def _pattern(self, key: str) -> str:
        if key == "teacache":
            return R.spread_skips(R.STEPS, R.TEACACHE_SKIPS, R.TEACACHE_RETENTION)
        _, threshold, k, retention = R.MAGCACHE_SETTING
        return magcache_pattern(ratios_for(self.settings.case.spec.name), threshold, k, retention)

    # -- the whole run ----------------------------------------------------------------------------------------

    def run(self) -> dict:
        s = self.settings
        log.info("building %s on %s (seeded random weights)", s.case.name, s.device)
        weights = build_model(s.case.spec, s.device, s.dtype, s.seed)
        inputs = make_inputs(s.case, s.device, s.dtype, s.seed)
        self.run_dense(weights, inputs)
        self.run_schedules(inputs)
        self._built.clear()
        del weights
        _free(s.device)
        if s.peer:
            from .peer import run_peer

            run_peer(self, inputs)
        return self.results  # finished and reported with its last rung

    # used by the peer line
    def record_peer(self, key: str, title: str, forward: Callable[[], torch.Tensor], model: Any, note: str) -> None:
        entry = {"title": title, "peer": True, "note": note, **self._measure(forward, model)}
        self._record(key, entry)

    def skip_peer(self, key: str, title: str, err: BaseException) -> None:
        self._skip(key, title, err)
        self.results["rungs"][key]["peer"] = True


def variant_assumptions(case: Case) -> list[str]:
    """What an image model's forward is given (stated in the results)."""
    spec, notes = case.spec, []
    if spec.takes_clip:
        notes.append(
            f"the forward takes one image's {case.image_tokens} CLIP-vision tokens ({spec.clip_dim} wide) beside the "
            f"text; the input latent is {spec.in_dim} channels (noise, mask, image latent). The dense floor leaves "
            "out the image cross-attention's kernels (its keys, values and attention over the image tokens)"
        )
    if spec.per_token_timesteps:
        notes.append(
            "a timestep per latent frame, the first frame at 0 (an image-conditioned first frame, as "
            "Wan22ImageToVideoLatent's noise mask gives); the peer gets it repeated per token"
        )
    return notes


def compare_with_peer(rungs: dict) -> dict | None:
    """DAX's full stack (the ``compile`` rung: FP8 linears, the best attention that ran below it, compile) or, where
    it did not run, DAX's fastest dense rung, against each peer rung that ran: the peer's seconds per forward over
    DAX's (above 1: DAX is faster)."""
    dense = [(r["forward_s"], k) for k, r in rungs.items()
             if r.get("status") == "ran" and not r.get("peer") and "pattern" not in r]  # fmt: skip
    peers = {k: r for k, r in rungs.items() if r.get("peer") and r.get("status") == "ran"}
    if not dense or not peers:
        return None
    seconds, key = min(dense)
    if rungs.get("compile", {}).get("status") == "ran":
        seconds, key = rungs["compile"]["forward_s"], "compile"
    rows = [
        {"peer": k, "title": r["title"], "forward_s": r["forward_s"], "first_s": r["first_s"],
         "peak_gib": r["peak_gib"], "peer_over_dax": r["forward_s"] / seconds}
        for k, r in peers.items()
    ]  # fmt: skip
    return {"dax_rung": key, "dax_title": rungs[key]["title"], "dax_forward_s": seconds,
            "dax_first_s": rungs[key]["first_s"], "dax_peak_gib": rungs[key]["peak_gib"], "rows": rows}  # fmt: skip


def finish(results: dict) -> None:
    """Ratios, floors and 50-step projections of every rung that ran, from its own timings; the upstream table."""
    rungs = results["rungs"]
    floors = results["floors"]
    best_floor = min((f["floor_s"] for f in floors.values()), default=None)
    results["best_floor_s"] = best_floor
    for entry in rungs.values():
        if entry.get("status") != "ran":
            continue
        if "pattern" in entry:  # a schedule rung
            branches = 2 if entry["cfg"] else 1
            steps = entry["pattern"]
            computed = steps.count("C")
            entry["skipped_steps"] = steps.count("S")
            per_branch = computed * entry["computed_s"] + entry["skipped_steps"] * entry["skipped_s"]
            entry["projected_s"] = branches * per_branch
            entry["step_s"] = entry["projected_s"] / len(steps)
            continue
        entry["step_s"] = 2 * entry["forward_s"]
        entry["projected_s"] = R.STEPS * entry["step_s"]
        if entry.get("floor") in floors:
            entry["floor_s"] = floors[entry["floor"]]["floor_s"]
            entry["x_floor"] = entry["forward_s"] / entry["floor_s"]
        if best_floor:
            entry["x_best_floor"] = entry["forward_s"] / best_floor
    stock = rungs.get("stock", {})
    if stock.get("status") == "ran":
        for entry in rungs.values():
            if entry.get("status") == "ran":
                entry["speedup"] = stock["projected_s"] / entry["projected_s"]
                if "forward_s" in entry and "pattern" not in entry:
                    entry["forward_speedup"] = stock["forward_s"] / entry["forward_s"]
    results["versus_peer"] = compare_with_peer(rungs)
    if results.get("model_type", "t2v") != "t2v":
        return  # upstream DAX's ladder is of Wan2.1 T2V 14B: no rung of another variant compares with it
    first = R.UPSTREAM_RUNGS[0].seconds
    results["upstream"] = {
        "source": R.UPSTREAM_SOURCE,
        "hardware": R.HARDWARE_NOTE,
        "rows": [
            {"title": u.title, "gpus": u.gpus, "seconds": u.seconds, "speedup": first / u.seconds, "ours": u.ours,
             "ours_projected_s": rungs.get(u.ours, {}).get("projected_s"),
             "ours_speedup": rungs.get(u.ours, {}).get("speedup")}
            for u in R.UPSTREAM_RUNGS
        ],
    }  # fmt: skip
