"""``python -m dax_core bench``: the speed ladder of one model and video size, written as JSON and Markdown.

    python -m dax_core bench --model 14b --video 1280x720x81 --out docs/benchmarks/ladder_h200_14b
    python -m dax_core bench --model 1.3b --peer                     # with diffusers' line on the same weights
    python -m dax_core bench --model tiny --device cpu --compile-backend aot_eager   # a smoke test
    python -m dax_core bench --model i2v-14b --rungs stock,sage,fp8,compile --peer  # Wan2.1 I2V 14B 720p
    python -m dax_core bench --model ti2v-5b --rungs stock,sage,fp8,compile --peer  # Wan2.2 TI2V 5B 1280x704x121

Models: 14b, 1.3b (Wan2.1 T2V), i2v-14b (Wan2.1 I2V, with one image's CLIP features), ti2v-5b (Wan2.2 TI2V, a
timestep per latent frame), and tiny, tiny-i2v, tiny-ti2v for smoke tests (docs/benchmarks/wan_family_h200.md has the
image variants on one H200).

Rungs (``--rungs``, comma-separated; stock always runs): stock, sage, fp8, int8, compile, graphs, teacache, magcache,
distill, and with ``--peer`` the diffusers line. ``--quick``: one timed forward per rung, no INT8 rung. On request
only (the dense stack built whole, for A/B runs of DAX's kernels): full, full_sage_inputs, full_input_kernels,
full_dax, eager_full, eager_dax.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from . import rungs as R
from .cases import DEFAULT_VIDEO, MODELS, case_for
from .ladder import Ladder, LadderSettings
from .report import markdown
from .timing import write_json

log = logging.getLogger(__name__)

RUNG_KEYS = tuple(r.key for r in R.dense_rungs()) + tuple(r.key for r in R.SCHEDULE_RUNGS)
ON_REQUEST = tuple(r.key for r in R.dense_rungs() if r.on_request)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dax_core bench",
        description="Time every acceleration of the dense stack against the same run's stock forward.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", choices=tuple(MODELS), default="14b")
    p.add_argument("--video", help=f"WIDTHxHEIGHTxFRAMES (default by model: {DEFAULT_VIDEO})")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rungs", help=f"comma list of {', '.join(RUNG_KEYS)} (default: all)")
    p.add_argument("--peer", action="store_true", help="add diffusers' line (diffusers, torchao) on the same weights")
    p.add_argument("--reps", type=int, default=2, help="timed forwards per rung after the first (default 2)")
    p.add_argument("--quick", action="store_true", help="one timed forward per rung and no INT8 rung")
    p.add_argument("--compile-backend", default="inductor", choices=("inductor", "aot_eager", "eager"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="path prefix of the .json and .md written (default: print the table)")
    return p


def _rungs(parser: argparse.ArgumentParser, text: str | None, quick: bool) -> tuple[str, ...]:
    if text is None:
        return tuple(k for k in RUNG_KEYS if not (quick and k == "int8") and k not in ON_REQUEST)
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [k for k in chosen if k not in RUNG_KEYS]
    if unknown:
        parser.error(f"unknown rung {', '.join(unknown)}: choose from {', '.join(RUNG_KEYS)}")
    return chosen


def run(argv: Sequence[str] | None = None) -> dict:
    """Parse ``argv``, run the ladder, write or print it; returns the results."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        case = case_for(args.model, args.video)
    except ValueError as e:
        parser.error(str(e))
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here: pass --device cpu (with --model tiny for a smoke test)")
    reps = 1 if args.quick else args.reps
    if reps < 1:
        parser.error("--reps must be at least 1")
    words = ["python -m dax_core bench", *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))]
    settings = LadderSettings(
        case=case, device=device, reps=reps, seed=args.seed, only=_rungs(parser, args.rungs, args.quick),
        peer=args.peer, compile_backend=args.compile_backend, command=" ".join(words),
    )  # fmt: skip
    prefix = None if args.out is None else str(args.out).removesuffix(".json").removesuffix(".md")

    def report(results: dict) -> None:
        if prefix is not None:
            write_json(Path(prefix + ".json"), results)
            Path(prefix + ".md").write_text(markdown(results))

    results = Ladder(settings, report).run()
    if prefix is None:
        sys.stdout.write(markdown(results))
    else:
        log.info("wrote %s.json and %s.md", prefix, prefix)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    run(argv)
    return 0
