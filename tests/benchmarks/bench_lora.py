"""LoRA at Wan2.1's real shapes, in one run: the merge's cost at build, a strength change on the warm engine, and one
forward with and without the merged LoRA (seeded random weights and a random rank-64 LoRA).

    python -m tests.benchmarks.bench_lora --case 14b-720p --workdir /tmp/dax-lora --out lora.json \
        [--accelerations '[{"kind": "quantize", "dtype": "fp8"}]']

Into ``--workdir`` it writes the weights (bf16, as the released 14B file; streamed tensor by tensor, never whole in
memory) and the LoRA (bf16, lightx2v's layout: a pair on every linear layer, diff / diff_b / diff_m on the rest).
Then, in order: the engine built without the LoRA and its forward; built with it (its build time less the first is
the merge); its forward; the strength changed on the warm engine (``use_loras_of``), and the forward again; with
``--verify``, a fresh build at the new strength compared tensor by tensor with the warm engine. The forwards run on
the same inputs, so their times are a like-for-like ratio and their outputs show that the LoRA changed the model.
Results (JSON, and a Markdown table beside it) are written after each phase, so a run cut short keeps what it
measured. Smoke test on the CPU: ``--case tiny --device cpu``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import time
from pathlib import Path

import torch

from dax_core.bench.weights import seeded_values
from dax_core.lora import lora_ref
from dax_core.lora.tiny import write_tiny_lora
from dax_core.models.detect import NUM_HEADS_METADATA, expected_shapes
from dax_core.models.spec import WanSpec
from dax_core.recipe import Recipe, acceleration_from_dict
from dax_core.runtime.engine import WanEngine

from .common import CASES, Case, device_name, median, sync, timed, write_json

RANK = 64
STRENGTHS = (1.0, 0.5)

log = logging.getLogger("bench_lora")


def write_random_weights(path: Path, spec: WanSpec, seed: int, device: torch.device) -> Path:
    """A bf16 safetensors file of ``spec``'s parameters with ``fill_seeded_``'s values, one tensor in memory at a
    time (the safetensors library wants the whole dict: 28 GB of host memory at 14B)."""
    shapes = expected_shapes(spec)
    header: dict = {"__metadata__": {NUM_HEADS_METADATA: str(spec.num_heads)}}
    offset = 0
    for name, shape in shapes.items():
        size = 2 * torch.Size(shape).numel()
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with path.open("wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob)
        for name, shape in shapes.items():
            values = seeded_values(name, shape, device, seed).to(torch.bfloat16).cpu()
            f.write(values.view(torch.int16).numpy().tobytes())
    return path


def _inputs(case: Case, device: torch.device, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(case.latent_shape, generator=g, device=device)
    t = torch.tensor([700.0], device=device)
    ctx = torch.randn(1, 512, case.spec.text_dim, generator=g, device=device).to(torch.bfloat16)
    return x, t, ctx


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _built(recipe: Recipe, device: torch.device) -> tuple[WanEngine, float]:
    sync(device)
    start = time.perf_counter()
    engine = WanEngine.build(recipe, device)
    sync(device)
    return engine, time.perf_counter() - start


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Every parameter and buffer of the two models equal, bit for bit."""
    ta, tb = {**dict(a.named_parameters()), **dict(a.named_buffers())}, {**dict(b.named_parameters()),
                                                                          **dict(b.named_buffers())}  # fmt: skip
    same = ta.keys() == tb.keys()
    for name in ta if same else ():
        x, y = ta[name], tb[name]
        x, y = (x.view(torch.uint8), y.view(torch.uint8)) if x.element_size() == 1 else (x, y)
        same = same and x.dtype == y.dtype and torch.equal(x, y)
    return same


def markdown(results: dict) -> str:
    """The results as the Markdown table of docs/benchmarks."""
    r = results
    rows = [
        ("weights read and built, without the LoRA", f"{r['build_s']['without_lora']:.1f} s"),
        (f"the same with the rank-{RANK} LoRA merged", f"{r['build_s']['with_lora']:.1f} s"),
        ("merge at build (the difference)", f"{r['merge_at_build_s']:.1f} s"),
        (f"strength {STRENGTHS[0]:g} -> {STRENGTHS[1]:g} on the warm engine", f"{r['strength_change_s']:.1f} s"),
    ]
    fwd = r.get("forward_s", {})
    for key, label in (("without_lora", "forward, no LoRA"), ("with_lora", "forward, LoRA merged"),
                       ("after_strength_change", "forward, after the strength change")):  # fmt: skip
        if key in fwd:
            rows.append((label, f"{median(fwd[key]):.3f} s (median of {len(fwd[key])})"))
    if "forward_ratio_lora_over_base" in r:
        rows.append(("forward with / without the LoRA", f"{r['forward_ratio_lora_over_base']:.3f}"))
    if "warm_equals_fresh_build" in r:
        rows.append(("warm engine equals a fresh build at the new strength", str(r["warm_equals_fresh_build"])))
    lines = [
        f"# LoRA merge and strength change, {r['case']}",
        "",
        f"Device: {r['device']}; torch {r['torch']}; accelerations {json.dumps(r['accelerations'])}; LoRA rank "
        f"{RANK} ({r['lora_parameters']} parameters changed). Command: `{r['command']}`",
        "",
        "| what | time |",
        "|---|---|",
        *(f"| {a} | {b} |" for a, b in rows),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="14b-720p", choices=sorted(CASES))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workdir", type=Path, required=True, help="where the weights and the LoRA are written")
    parser.add_argument("--accelerations", default="[]", help="JSON list of acceleration dicts, as in a recipe")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-verify", dest="verify", action="store_false", help="skip the fresh build at the end")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark times GPU work (smoke-test: --case tiny --device cpu)")
    case = CASES[args.case]
    accelerations = tuple(acceleration_from_dict(a) for a in json.loads(args.accelerations))
    results: dict = {
        "device": device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "case": case.name,
        "accelerations": [a.to_dict() for a in accelerations],
        "command": "python -m tests.benchmarks.bench_lora " + " ".join(sys.argv[1:] if argv is None else argv),
        "build_s": {},
        "forward_s": {},
    }

    def save() -> None:
        write_json(args.out, results)
        if "strength_change_s" in results:
            args.out.with_suffix(".md").write_text(markdown(results))

    args.workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    weights = write_random_weights(args.workdir / f"wan-{args.case}-bf16.safetensors", case.spec, 0, device)
    lora = write_tiny_lora(args.workdir / f"lora-{args.case}-rank{RANK}.safetensors", case.spec, rank=RANK)
    results["files_written_s"] = time.perf_counter() - start
    base = Recipe(str(weights), accelerations=accelerations)
    with_lora = [base.with_loras((lora_ref(lora, s),)) for s in STRENGTHS]
    x, t, ctx = _inputs(case, device, 1)

    def forward(engine: WanEngine, key: str) -> torch.Tensor:
        with torch.inference_mode():
            results["forward_s"][key] = timed(lambda: engine.model(x, t, ctx), args.reps, device, args.warmup)
            return engine.model(x, t, ctx).float().cpu()

    engine, results["build_s"]["without_lora"] = _built(base, device)
    plain = forward(engine, "without_lora")
    del engine
    _free()
    save()
    engine, results["build_s"]["with_lora"] = _built(with_lora[0], device)
    results["merge_at_build_s"] = results["build_s"]["with_lora"] - results["build_s"]["without_lora"]
    results["lora_parameters"] = len(engine.lora_params)
    merged = forward(engine, "with_lora")
    results["forward_ratio_lora_over_base"] = median(results["forward_s"]["with_lora"]) / median(
        results["forward_s"]["without_lora"]
    )
    results["output_rel_diff_lora_vs_base"] = _rel(merged, plain)
    save()
    sync(device)
    start = time.perf_counter()
    engine.use_loras_of(with_lora[1])
    sync(device)
    results["strength_change_s"] = time.perf_counter() - start
    changed = forward(engine, "after_strength_change")
    results["output_rel_diff_after_change_vs_lora"] = _rel(changed, merged)
    save()
    if args.verify:
        fresh, _ = _built(with_lora[1], device)
        results["warm_equals_fresh_build"] = _same_tensors(engine.model, fresh.model)
        del fresh
    del engine
    _free()
    save()
    log.info("%s", markdown(results))
    return results


if __name__ == "__main__":
    main()
