"""One rank of the image-to-video sequence-parallel tests (CPU with gloo), started by ``parallel_worker.launch``
with the same command line: for every case the I2V (or FLF2V, or Wan2.2 I2V A14B without CLIP) tiny model runs two
forwards with its CLIP features (none for the last) single-process, then split over the ranks (both schedules), and a
short CFG sampling run with image conditioning; the differences go to DIR/rank<R>.json."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dax_core.models.spec import WanSpec  # noqa: E402
from dax_core.models.tiny import random_state_dict  # noqa: E402
from dax_core.models.wan import WanModel  # noqa: E402
from dax_core.parallel import ParallelConfig, disable_sequence_parallel, enable_sequence_parallel  # noqa: E402
from dax_core.recipe import Recipe  # noqa: E402
from dax_core.runtime.engine import SampleRequest, WanEngine  # noqa: E402
from tests.numerics import rel_error  # noqa: E402

log = logging.getLogger("image_parallel_worker")
CLIP = 24
SPECS = {
    "i2v": WanSpec(dim=96, num_layers=2, num_heads=12, ffn_dim=128, text_dim=32, freq_dim=32, in_dim=36,
                   model_type="i2v", clip_dim=CLIP),
    "flf2v": WanSpec(dim=96, num_layers=2, num_heads=12, ffn_dim=128, text_dim=32, freq_dim=32, in_dim=36,
                     model_type="flf2v", clip_dim=CLIP, image_pos_tokens=14),
    "i2v22": WanSpec(dim=96, num_layers=2, num_heads=12, ffn_dim=128, text_dim=32, freq_dim=32, in_dim=36,
                     model_type="i2v", clip_dim=0),  # Wan2.2 I2V A14B: the image latent alone
}  # fmt: skip
LATENT = [1, 16, 3, 6, 10]  # 3 x 3 x 5 = 45 tokens: not a multiple of 2
CASES = {
    f"{layout}-{variant}": {"variant": variant, "ulysses": u, "ring": r, "cfg_parallel": cfg}
    for layout, (u, r, cfg) in {"ulysses2": (2, 1, False), "ring2": (1, 2, False), "cfg2": (1, 1, True)}.items()
    for variant in SPECS
}
"""case name -> the variant and the 2-rank layout it runs."""
CASES4 = {
    f"{layout}-{variant}": {"variant": variant, "ulysses": u, "ring": r, "cfg_parallel": cfg}
    for layout, (u, r, cfg) in {"ulysses2-ring2": (2, 2, False), "cfg2-ulysses2": (2, 1, True)}.items()
    for variant in SPECS
}
"""The same on 4 ranks: Ulysses pairs in a ring of 2, and CFG-parallel halves each split by Ulysses."""


def _model(variant: str) -> WanModel:
    spec = SPECS[variant]
    model = WanModel(spec, dtype=torch.float32)
    model.load_state_dict(random_state_dict(spec, seed=2))
    return model.eval()


def _tensors(variant: str) -> dict[str, torch.Tensor | None]:
    g = torch.Generator().manual_seed(5)
    tokens = 14 if variant == "flf2v" else 7  # FLF2V: two images' tokens
    return {
        "x": torch.randn(2, 36, *LATENT[2:], generator=g),  # the CFG batch: noise, mask and image latent
        "ctx": torch.randn(2, 7, 32, generator=g),
        "clip": torch.randn(2, tokens, CLIP, generator=g) if SPECS[variant].takes_clip else None,
        "image": torch.randn(1, 20, *LATENT[2:], generator=g),
    }


def _forwards(model: WanModel, t: dict[str, torch.Tensor | None]) -> torch.Tensor:
    outs = [model(t["x"], torch.full((2,), step), t["ctx"], clip_fea=t["clip"]) for step in (900.0, 400.0)]
    return torch.stack(outs)


def _sampled(model: WanModel, t: dict[str, torch.Tensor | None]) -> torch.Tensor:
    clip = t["clip"]
    request = SampleRequest(
        positive=t["ctx"][:1], negative=t["ctx"][1:], latent=torch.zeros(LATENT), seed=3, steps=3, cfg=5.0,
        sampler="euler", positive_image=t["image"], negative_image=t["image"],
        positive_clip=None if clip is None else clip[:1], negative_clip=None if clip is None else clip[1:],
    )  # fmt: skip
    return WanEngine(model, Recipe("seeded-random-weights", compute_dtype="fp32"), "cpu").sample(request).latent


def run_case(case: dict, world: int) -> dict:
    model = _model(case["variant"])
    t = _tensors(case["variant"])
    ref_forward, ref_sampled = _forwards(model, t), _sampled(model, t)
    out: dict = {"ref_forward_max": ref_forward.abs().max().item()}
    for overlap in (True, False):
        enable_sequence_parallel(model, ParallelConfig(world, case["ulysses"], case["ring"], case["cfg_parallel"],
                                                       overlap))  # fmt: skip
        name = "overlap" if overlap else "plain"
        out[f"forward_{name}"] = rel_error(_forwards(model, t), ref_forward)
        out[f"sampled_{name}"] = rel_error(_sampled(model, t), ref_sampled)
        disable_sequence_parallel(model)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    for flag in ("--rank", "--world", "--port"):
        parser.add_argument(flag, type=int, required=True)
    parser.add_argument("--cases", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", choices=("cpu",), default="cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format=f"rank {args.rank} %(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=args.rank,
                            world_size=args.world, timeout=timedelta(seconds=60))  # fmt: skip
    try:
        with torch.inference_mode():
            results = {name: run_case(case, args.world) for name, case in json.loads(args.cases).items()}
    finally:
        dist.destroy_process_group()
    (args.out / f"rank{args.rank}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main()
