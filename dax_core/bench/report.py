"""The ladder's results as Markdown: the rungs, the kernel ceilings behind the floors, upstream DAX's ladder."""

from __future__ import annotations

from .ceilings import LAYERS


def _num(value: float | None, fmt: str = ".3f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{fmt}}{suffix}"


def _accelerations(accs: list[dict]) -> str:
    parts = []
    for acc in accs:
        extra = [f"{k}={v}" for k, v in acc.items() if k != "kind"]
        parts.append(acc["kind"] + (f" ({', '.join(extra)})" if extra else ""))
    return ", ".join(parts) or "none"


def _rung_rows(results: dict) -> list[str]:
    rows = [
        "| rung | accelerations | s / forward | s / step | x stock (forward) | x own floor | first call s | peak GiB "
        "| rel. error vs stock | 50 steps, projected s | x stock (50 steps) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rungs"].values():
        if r.get("status") != "ran":
            rows.append(f"| {r['title']} | {r.get('status', '?')}: {r.get('reason', '')} |  |  |  |  |  |  |  |  |  |")
            continue
        accs = _accelerations(r.get("accelerations", [])) if not r.get("peer") else r.get("note", "")
        skips = "pattern" in r and "S" in r["pattern"]
        forward = f"{r['computed_s']:.3f} (computed), {r['skipped_s'] * 1e3:.1f} ms (skipped)" if skips else None
        if "pattern" in r and not skips:
            forward = f"{r['computed_s']:.3f}"
        rows.append(
            f"| {r['title']} | {accs} | {forward or _num(r.get('forward_s'))} | {_num(r.get('step_s'))} | "
            f"{_num(r.get('forward_speedup'), '.2f', 'x')} | {_num(r.get('x_floor'), '.3f', 'x')} | "
            f"{_num(r.get('first_s'), '.1f')} | {_num(r.get('peak_gib'), '.1f')} | "
            f"{_num(r.get('rel_err_vs_stock'), '.4f')} | {_num(r.get('projected_s'), '.1f')} | "
            f"{_num(r.get('speedup'), '.2f', 'x')} |"
        )
    return rows


def _floor_rows(results: dict) -> list[str]:
    rows = [
        "| kernels | " + " | ".join(LAYERS) + " | self-attention | cross-attention | floor s / forward (back to back) "
        "| the same, kernels timed apart |",
        "|---|" + "---|" * (len(LAYERS) + 4),
    ]
    for key, f in results["floors"].items():
        cells = [f"{f['kernels'][n]['s'] * 1e3:.3f} ms ({f['kernels'][n]['tflops']:.0f})" for n in LAYERS]
        attn = [f"{f['kernels'][n]['s'] * 1e3:.2f} ms ({f['kernels'][n]['tflops']:.0f})"
                for n in ("self_attention", "cross_attention")]  # fmt: skip
        apart = _num(f.get("floor_kernels_apart_s"), ".3f")
        rows.append(f"| {key} | " + " | ".join(cells + attn) + f" | {f['floor_s']:.3f} | {apart} |")
    return rows


def _upstream_rows(results: dict) -> list[str]:
    up = results["upstream"]
    rows = [
        "| upstream DAX rung (H20) | GPUs | 50 steps s | x its 1 GPU | this ladder's rung (1 GPU) | 50 steps s, "
        "projected | x this run's stock |",
        "|---|---|---|---|---|---|---|",
    ]
    for u in up["rows"]:
        ours = results["rungs"].get(u["ours"], {}).get("title", "—") if u["ours"] else "— (no one-GPU counterpart)"
        rows.append(
            f"| {u['title']} | {u['gpus']} | {u['seconds']:.0f} | {u['speedup']:.2f}x | {ours} | "
            f"{_num(u['ours_projected_s'], '.1f')} | {_num(u['ours_speedup'], '.2f', 'x')} |"
        )
    return rows


def _peer_rows(versus: dict) -> list[str]:
    which = "full stack" if versus["dax_rung"] == "compile" else "fastest rung"
    rows = [
        f"DAX's {which}, {versus['dax_title']}: {versus['dax_forward_s']:.3f} s per forward (first call "
        f"{versus['dax_first_s']:.1f} s, peak {_num(versus['dax_peak_gib'], '.1f')} GiB).",
        "",
        "| peer rung | s / forward | first call s | peak GiB | peer s / DAX s |",
        "|---|---|---|---|---|",
    ]
    for r in versus["rows"]:
        rows.append(f"| {r['title']} | {r['forward_s']:.3f} | {r['first_s']:.1f} | {_num(r['peak_gib'], '.1f')} | "
                    f"{r['peer_over_dax']:.2f}x |")  # fmt: skip
    return rows


def markdown(results: dict) -> str:
    lines = [
        f"# Speed ladder: {results['case']} on {results['device']}",
        "",
        f"Command: `{results['command']}` (torch {results['torch']}, {results['reps']} timed "
        f"forward{'s' if results['reps'] != 1 else ''} per rung after the first; {results['tokens']:,} video tokens).",
        "",
        "One forward = the transformer on one CFG branch; a step with CFG = two. *x own floor*: the forward over the "
        "time its own GEMMs and attention kernels take alone, back to back for every block, timed in this run "
        "(table below). *First call*: "
        "compilation and graph capture included. Peak GiB: the rung's weights plus its forward's working memory. "
        "Step-cache and distilled rungs: the error of the forward they compute (skipping's error depends on real "
        "weights and is not measured here).",
        "",
        *_rung_rows(results),
        "",
    ]
    if results.get("best_floor_s"):
        lines += [f"Best dense floor measured here: {results['best_floor_s']:.3f} s per forward.", ""]
    for r in results["rungs"].values():
        if "pattern" in r and r.get("status") == "ran":
            lines.append(f"- {r['title']}: on `{r['on']}`, {r['pattern'].count('S')} of {len(r['pattern'])} steps "
                         f"skipped: `{r['pattern']}`")  # fmt: skip
    if results["floors"]:
        lines += [
            "",
            "## Kernel ceilings (block 0, one forward's shapes; ms per call, TFLOP/s in brackets)",
            "",
            *_floor_rows(results),
        ]
    if results.get("versus_peer"):
        lines += [
            "",
            "## DAX against diffusers on the same weights and inputs",
            "",
            *_peer_rows(results["versus_peer"]),
        ]
    if "upstream" in results:
        lines += ["", f"## Against {results['upstream']['source']}", "", *_upstream_rows(results), "",
                  results["upstream"]["hardware"]]  # fmt: skip
    lines += ["", "## Assumptions", "", *(f"- {a}" for a in results["assumptions"]), ""]
    return "\n".join(lines)
