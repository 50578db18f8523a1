"""Project sequence-parallel step times to 4 and 8 GPUs from a measured 2-GPU run (bench_parallel's JSON).

    python -m tests.benchmarks.scaling_model docs/benchmarks/parallel_2xh200.json

The model, per case, from what the 2-GPU run measured (overlap off):
- compute: the 1-GPU step divided by N, times (1 + c), where c is the extra compute kernel time the 2-GPU
  run showed over half the 1-GPU step (token-layout copies around the all-to-alls, per local token);
- communication: Ulysses moves each rank's shard of q, k, v and the output through an all-to-all; a rank sends
  (N-1)/N of its S/N tokens, so the bytes per rank scale as (N-1)/N^2 (x 4/1 against N=2's 1/4);
- exposed communication: the share of the step with no compute kernel running, measured at N=2, scaled the
  same way. This assumes an all-to-all fabric (NVSwitch) whose per-GPU bandwidth does not drop with N, and
  that Ulysses divides the heads (40 heads: 2, 4, 5, 8 GPUs; 1.3B's 12 heads need the hybrid at 8).
It is a projection to check against a real 4- and 8-GPU run, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger("scaling_model")


def project(case: dict, gpus: int) -> dict:
    measured_n = case["gpus"]
    one = case["one_gpu"]["median_s"]
    off = case["overlap_off"]
    wall = off["median_s"]
    compute_extra = off["profile"]["compute_kernel_s"] / (one / measured_n) - 1.0
    exposed = off["profile"]["compute_idle_share"] * wall

    def comm_scale(n: int) -> float:
        return (n - 1) / n**2

    step = one / gpus * (1 + compute_extra) + exposed * comm_scale(gpus) / comm_scale(measured_n)
    return {"gpus": gpus, "step_s": step, "ratio": step / one, "efficiency": one / (gpus * step)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    parser.add_argument("--gpus", type=int, nargs="+", default=[2, 4, 8])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = json.loads(args.results.read_text())
    log.info("| case | GPUs | projected step s | x 1 GPU | efficiency |")
    log.info("|---|---|---|---|---|")
    for case in data["cases"].values():
        for n in args.gpus:
            p = project(case, n)
            row = (case["case"], n, p["step_s"], p["ratio"], 100 * p["efficiency"])
            log.info("| %s | %d | %.2f | %.3f | %.1f%% |", *row)


if __name__ == "__main__":
    main()
