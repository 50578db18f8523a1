"""What the sampler's live status and latent previews cost per step, at Wan2.1-T2V-14B 1280x720x81 (CFG batched).

    python -m tests.benchmarks.bench_preview --out preview.json --md preview.md     # one GPU: about 3 minutes

Measured in one run, on seeded random weights in bf16 (step times do not depend on the weight values):

- a denoising step: one CFG-batched forward of the real latent, median of ``--step-reps``;
- what the engine adds to a step when a status is wanted (``on_progress``) and a preview too: the device sync that
  dates the step, the middle frame of the denoised prediction averaged to a preview latent and copied to the CPU
  (``preview_latent``), the ``StepProgress`` itself; median of ``--reps``;
- what a worker group adds on top: rank 0's progress message (the preview in float16) through a loopback socket,
  read and rebuilt by the owner (a new socket pair and reader thread each time: an upper bound);
- what ComfyUI does with it: its previewer maps the latent to RGB with the Wan factors (ComfyUI's own
  ``Latent2RGBPreviewer`` when ComfyUI is importable, $COMFYUI_PATH or ~/ComfyUI, else a stand-in of the same work:
  a 16 -> 3 linear map to an 8-bit picture, as the JSON says), on the sampling thread; then its server scales the
  picture to fit 512 pixels and sends it as a JPEG (quality 95), on the server's own thread (timed the same way).

On one GPU the engine's part and the previewer run between two steps (the JPEG beside them); in a worker group the
owner's part runs while the ranks compute the next step. The target is under 1 % of a step, JPEG included.
"""

from __future__ import annotations

import argparse
import io
import logging
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from dax_core.models.spec import WanSpec
from dax_core.recipe import Recipe
from dax_core.runtime.engine import SampleRequest, WanEngine
from dax_core.runtime.progress import StepProgress, preview_latent
from dax_core.runtime.sample_messages import progress_fields, progress_from_message
from dax_core.runtime.wire import recv_message, send_message

from .common import CASES, Case, build_ours, device_name, sync, timed, write_json

log = logging.getLogger("bench_preview")

TARGET = 0.01
PREVIEW_SIZE = 512  # ComfyUI's default --preview-size
CASES_HERE = {**CASES, "tiny": Case("tiny (smoke test)", WanSpec(64, 2, 4, 128, text_dim=32), 64, 64, 9)}
COMMAND = "python -m tests.benchmarks.bench_preview --out preview.json --md preview.md"


def _comfyui_previewer(device: torch.device) -> Any | None:
    """ComfyUI's latent-to-RGB previewer for Wan latents, when a ComfyUI checkout can be imported here."""
    from dax_core.demo.comfy_server import find_comfyui

    comfyui = find_comfyui()
    if comfyui is None:
        return None
    if str(comfyui) not in sys.path:
        sys.path.insert(0, str(comfyui))
    try:
        import comfy.cli_args

        if device.type == "cpu":
            comfy.cli_args.args.cpu = True  # what `main.py --cpu` sets; ComfyUI reads it when first imported
        import comfy.latent_formats
        import latent_preview
    except Exception as e:  # a checkout without its requirements, or a ComfyUI that cannot start here
        log.warning("ComfyUI at %s does not import (%s): timing a stand-in previewer", comfyui, e)
        return None
    fmt = comfy.latent_formats.Wan21()
    return latent_preview.Latent2RGBPreviewer(fmt.latent_rgb_factors, fmt.latent_rgb_factors_bias)


class _StandInPreviewer:
    """The work of ComfyUI's Latent2RGBPreviewer on a Wan latent: a 16 -> 3 map per pixel to an 8-bit picture."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.factors, self.bias = torch.randn(3, 16, generator=g) * 0.1, torch.zeros(3)

    def decode_latent_to_preview_image(self, preview_format: str, x0: torch.Tensor) -> tuple[str, Any, int]:
        from PIL import Image

        factors, bias = self.factors.to(x0.device), self.bias.to(x0.device)
        rgb = torch.nn.functional.linear(x0[0, :, 0].movedim(0, -1), factors, bias)
        pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).to("cpu", torch.uint8).numpy()
        return preview_format, Image.fromarray(pixels), PREVIEW_SIZE


def _server_jpeg(preview: tuple[str, Any, int]) -> bytes:
    """What ComfyUI's server does with a preview before sending it: fit it into the preview size, then a JPEG."""
    from PIL import ImageOps
    from PIL.Image import Resampling

    kind, image, size = preview
    out = io.BytesIO()
    ImageOps.contain(image, (size, size), Resampling.BILINEAR).save(out, format=kind, quality=95)
    return out.getvalue()


def _wire_round_trip(progress: StepProgress) -> StepProgress:
    """Rank 0's progress message through a loopback socket, read on another thread as the owner reads it."""
    a, b = socket.socketpair()
    got: list[StepProgress] = []
    reader = threading.Thread(target=lambda: got.append(progress_from_message(recv_message(b))))
    with a, b:
        reader.start()
        fields, tensors = progress_fields(progress)
        send_message(a, "progress", {"id": 1, **fields}, tensors)
        reader.join()
    return got[0]


@torch.inference_mode()
def run(case: Case, device: torch.device, step_reps: int, reps: int, seed: int = 0) -> dict:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    start = time.perf_counter()
    model = build_ours(case.spec, str(device), dtype, seed)
    log.info("built %s in %.1f s", case.spec.name, time.perf_counter() - start)
    engine = WanEngine(model, Recipe("unused.safetensors"), device)
    g = torch.Generator().manual_seed(seed + 1)
    text = torch.randn(1, 512, case.spec.text_dim, generator=g)
    latent = torch.zeros(case.latent_shape)
    req = SampleRequest(text, text, latent, seed=seed, steps=50, cfg=5.0)  # equal lengths: CFG batched
    denoise = engine.denoiser(req)
    x = torch.randn(case.latent_shape, generator=g).to(device)

    denoise(x[:, :, :1], 0.9)  # warm-up on one latent frame: kernels loaded without a full-size forward
    x0 = None

    def step() -> None:
        nonlocal x0
        x0 = denoise(x, 0.9)

    step_times = timed(step, step_reps, device)
    assert x0 is not None

    def engine_part() -> StepProgress:  # what sample() does per step for on_progress with a preview
        sync(device)
        return StepProgress(2, 50, 2.0, 1.0, preview=preview_latent(x0))

    progress = engine_part()
    engine_times = timed(engine_part, reps, device)
    wire_times = timed(lambda: _wire_round_trip(progress), reps, device)
    previewer = _comfyui_previewer(device)
    which = "ComfyUI's Latent2RGBPreviewer" if previewer is not None else "a stand-in (ComfyUI not importable)"
    previewer = previewer or _StandInPreviewer()
    on_device = progress.preview.to(device)  # the node hands the previewer the latent on ComfyUI's device
    preview_times = timed(lambda: previewer.decode_latent_to_preview_image("JPEG", on_device), reps, device)
    picture = previewer.decode_latent_to_preview_image("JPEG", on_device)
    jpeg_times = timed(lambda: _server_jpeg(picture), reps, device)

    step_s = statistics.median(step_times)
    parts = {
        "engine_s": statistics.median(engine_times),
        "wire_s": statistics.median(wire_times),
        "previewer_s": statistics.median(preview_times),
        "jpeg_s": statistics.median(jpeg_times),
    }
    one_gpu = parts["engine_s"] + parts["previewer_s"] + parts["jpeg_s"]  # the JPEG counted though it runs beside
    group = parts["engine_s"] + parts["wire_s"]  # the owner's previewer runs while the ranks go on
    return {
        "case": case.name,
        "latent": list(case.latent_shape),
        "preview_latent": list(progress.preview.shape),
        "previewer": which,
        "step_s": step_s,
        "step_times_s": step_times,
        **parts,
        "times_s": {"engine": engine_times, "wire": wire_times, "previewer": preview_times, "jpeg": jpeg_times},
        "one_gpu_fraction": one_gpu / step_s,
        "group_rank0_fraction": group / step_s,
        "within_target": max(one_gpu, group) / step_s < TARGET,
    }


def table(r: dict, device: str) -> str:
    ms = 1e3
    return "\n".join(
        [
            f"# Live status and latent previews: cost per step ({device})",
            "",
            f"`{COMMAND}`; {r['case']}, CFG batched; latent {r['latent']}, preview latent {r['preview_latent']}; "
            f"previewer: {r['previewer']}.",
            "",
            "| part | ms per step | share of a step |",
            "|---|---|---|",
            f"| denoising step (one CFG-batched forward) | {r['step_s'] * ms:.1f} | 100 % |",
            f"| engine: sync, preview latent to the CPU, StepProgress | {r['engine_s'] * ms:.3f} | "
            f"{100 * r['engine_s'] / r['step_s']:.4f} % |",
            f"| worker group: progress message through the control channel | {r['wire_s'] * ms:.3f} | "
            f"{100 * r['wire_s'] / r['step_s']:.4f} % |",
            f"| ComfyUI's previewer: latent to RGB (sampling thread) | {r['previewer_s'] * ms:.3f} | "
            f"{100 * r['previewer_s'] / r['step_s']:.4f} % |",
            f"| ComfyUI's server: scaled to {PREVIEW_SIZE} px, JPEG (its own thread) | {r['jpeg_s'] * ms:.3f} | "
            f"{100 * r['jpeg_s'] / r['step_s']:.4f} % |",
            "",
            f"One GPU (engine, previewer and JPEG): {100 * r['one_gpu_fraction']:.4f} % of a step; worker group "
            f"(rank 0's engine part + message; the owner previews while the ranks go on): "
            f"{100 * r['group_rank0_fraction']:.4f} %. Under {100 * TARGET:.0f} %: "
            f"{'yes' if r['within_target'] else 'NO'}.",
        ]
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES_HERE), default="14b-720p")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--step-reps", type=int, default=2, help="full steps timed (about 23 s each at 14B 720p)")
    parser.add_argument("--reps", type=int, default=20, help="repetitions of each per-step part")
    parser.add_argument("--out", type=Path, required=True, help="results as JSON")
    parser.add_argument("--md", type=Path, help="the Markdown table too")
    args = parser.parse_args(argv)
    if args.step_reps < 1 or args.reps < 1:
        parser.error("need --step-reps >= 1 and --reps >= 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this measures GPU step costs (smoke test: --case tiny --device cpu)")
    name = device_name() if device.type == "cuda" else "cpu"
    results = {"device": name, "torch": torch.__version__, "command": COMMAND}
    results["preview"] = run(CASES_HERE[args.case], device, args.step_reps, args.reps)
    write_json(args.out, results)
    text = table(results["preview"], name)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(text + "\n")
    log.info("\n%s", text)
    return results


if __name__ == "__main__":
    main()
