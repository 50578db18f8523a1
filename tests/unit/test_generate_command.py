"""``python -m dax_core generate``: one process, and the same command under torchrun (2 processes splitting the
video tokens) give the same latent. (Two launcher agents meeting at one endpoint are tested with the worker group.)"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from dax_core.recipe import Recipe
from dax_core.runtime.engine import SampleRequest, WanEngine
from dax_core.runtime.generate import main
from dax_core.runtime.group import free_port
from tests.environment import REPO
from tests.unit.group_helpers import TINY, tiny_recipe

ARGS = ["--width", "64", "--height", "32", "--frames", "5", "--steps", "3", "--seed", "7", "--cfg", "4.5"]
ARGS += ["--compute-dtype", "fp32", "--device", "cpu", "--sampler", "euler"]
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("generate")
    recipe = tiny_recipe(folder)
    g = torch.Generator().manual_seed(3)
    embeddings = folder / "prompt.safetensors"
    save_file(
        {
            "positive": torch.randn(5, TINY["text_dim"], generator=g),
            "negative": torch.randn(7, TINY["text_dim"], generator=g),
        },
        str(embeddings),
    )
    return ["--weights", recipe.weights, "--text-embeddings", str(embeddings), *ARGS]


@pytest.fixture(scope="module")
def single(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "latent.safetensors"
    assert main([*inputs, "--out", str(out)]) == 0
    return load_file(str(out))["latent"]


def test_single_process_writes_comfyui_latent(single):
    assert single.shape == (1, 16, 2, 4, 8) and single.dtype == torch.float32
    assert torch.isfinite(single).all() and single.abs().max() > 0


def test_single_process_is_the_engine_with_the_arguments_given(inputs, single):
    # every option of ARGS reaches the engine: the same request built by hand gives the same latent, bit for bit
    weights = inputs[inputs.index("--weights") + 1]
    embeddings = load_file(inputs[inputs.index("--text-embeddings") + 1])
    engine = WanEngine.build(Recipe(weights, compute_dtype="fp32"), "cpu")
    request = SampleRequest(
        embeddings["positive"][None], embeddings["negative"][None], torch.zeros(1, 16, 2, 4, 8),
        seed=7, steps=3, cfg=4.5, shift=8.0, sampler="euler", scheduler="simple",
    )  # fmt: skip
    assert torch.equal(single, engine.sample(request).latent)


def _agent(nnodes: int, nproc: int, endpoint: str, args: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc-per-node", str(nproc)]
    cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "generate-test"]
    cmd += ["--max-restarts", "0", "--local-addr", "127.0.0.1", "-m", "dax_core", "generate", *args]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize(
    ("flags", "layout"), [([], "ulysses=2"), (["--ring", "2"], "ring=2")], ids=["default-ulysses", "ring"]
)
def test_under_torchrun_gives_the_single_process_latent(inputs, single, tmp_path, flags, layout):
    out = tmp_path / "latent.safetensors"
    agent = _agent(1, 2, f"127.0.0.1:{free_port()}", [*inputs, *flags, "--out", str(out)])
    try:
        log = agent.communicate(timeout=TIMEOUT_S)[0]
    finally:
        agent.kill()
    assert agent.returncode == 0, log
    assert "rank 1 of 2 joined the process group" in log
    assert f"sequence parallel on rank 1: 2 GPUs: {layout}" in log  # the tokens really were split
    # The tokens are split over the 2 ranks, which run one thread each where this process runs several: GEMM
    # blockings and the ring's log-sum-exp merge reorder float32 sums. Measured on these (seeded) inputs: at most
    # 1.7e-5 (Ulysses) and 2.3e-5 (ring) at a latent scale of 15, 1.5e-6 of the scale; the bound is 1e-5 of the
    # scale (6x that), while a wrong split or a lost step moves the latent by a large part of its scale.
    got = load_file(str(out))["latent"]
    torch.testing.assert_close(got, single, rtol=0, atol=1e-5 * single.abs().max().item())


def test_bad_layout_is_refused_with_the_fix(inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit):
        main([*inputs, "--out", str(tmp_path / "x.safetensors"), "--cfg-parallel"])
    assert "--cfg-parallel needs an even number of processes, got 3" in capsys.readouterr().err


def test_loras_reach_the_engine(inputs, single, tmp_path):
    from dax_core.lora import lora_ref
    from dax_core.lora.tiny import write_tiny_lora
    from dax_core.models.loading import inspect_weights

    weights = inputs[inputs.index("--weights") + 1]
    lora = write_tiny_lora(tmp_path / "lora.safetensors", inspect_weights(weights).spec, rank=2)
    out = tmp_path / "latent.safetensors"
    assert main([*inputs, "--out", str(out), "--lora", f"{lora}:0.5", "--lora", str(lora)]) == 0
    embeddings = load_file(inputs[inputs.index("--text-embeddings") + 1])
    recipe = Recipe(weights, compute_dtype="fp32", loras=(lora_ref(lora, 0.5), lora_ref(lora, 1.0)))
    request = SampleRequest(
        embeddings["positive"][None], embeddings["negative"][None], torch.zeros(1, 16, 2, 4, 8),
        seed=7, steps=3, cfg=4.5, shift=8.0, sampler="euler", scheduler="simple",
    )  # fmt: skip
    got = load_file(str(out))["latent"]
    assert torch.equal(got, WanEngine.build(recipe, "cpu").sample(request).latent)
    assert not torch.equal(got, single)


def test_wan22_models_generate_their_own_latents(inputs, tmp_path):
    from dax_core.models.tiny import write_tiny_model
    from dax_core.runtime.distributed import build_engine

    embeddings = load_file(inputs[inputs.index("--text-embeddings") + 1])
    base = [a for a in inputs if a not in ("--weights", inputs[inputs.index("--weights") + 1])]
    ti2v = write_tiny_model(tmp_path / "ti2v.safetensors", seed=4, variant="ti2v", **TINY)
    assert main(["--weights", str(ti2v), *base, "--out", str(tmp_path / "ti2v-latent.safetensors")]) == 0
    # 64 x 32 pixels are 4 x 2 cells of the Wan2.2 VAE (16 pixels each), 48 channels
    assert load_file(str(tmp_path / "ti2v-latent.safetensors"))["latent"].shape == (1, 48, 2, 2, 4)
    high = write_tiny_model(tmp_path / "high.safetensors", seed=5, **TINY)
    low = write_tiny_model(tmp_path / "low.safetensors", seed=6, **TINY)
    pair = ["--weights", str(high), "--model", "wan2.2-t2v-a14b", "--low-noise-weights", str(low), "--shift", "12"]
    assert main([*pair, *base, "--out", str(tmp_path / "pair-latent.safetensors")]) == 0
    recipe = Recipe(str(high), compute_dtype="fp32", model_choice="wan2.2-t2v-a14b", low_noise_weights=str(low))
    request = SampleRequest(
        embeddings["positive"][None], embeddings["negative"][None], torch.zeros(1, 16, 2, 4, 8),
        seed=7, steps=3, cfg=4.5, shift=12.0, sampler="euler", scheduler="simple",
    )  # fmt: skip
    expected = build_engine(recipe, torch.device("cpu"), None).sample(request).latent
    assert torch.equal(load_file(str(tmp_path / "pair-latent.safetensors"))["latent"], expected)


# -- image models: the start image's tensors (--image) ----------------------------------------------------------------


def _image_file(tmp_path, **tensors) -> str:
    path = tmp_path / "image.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return str(path)


def _base(inputs) -> list[str]:
    return [a for a in inputs if a not in ("--weights", inputs[inputs.index("--weights") + 1])]


def test_an_i2v_model_takes_the_start_image_as_wan_image_to_video_gives_it(inputs, tmp_path):
    from dax_core.models.tiny import tiny_spec, write_tiny_model
    from dax_core.runtime.image_conditioning import model_image_input

    i2v = write_tiny_model(tmp_path / "i2v.safetensors", seed=8, variant="i2v", clip_dim=48, **TINY)
    g = torch.Generator().manual_seed(9)
    image = torch.randn(1, 16, 2, 4, 8, generator=g)
    mask = torch.ones(1, 1, 2, 4, 8)
    mask[:, :, 0] = 0.0  # WanImageToVideo's: the start image's latent frame is given
    clip = torch.randn(257, 48, generator=g)
    files = _image_file(tmp_path, concat_latent_image=image, concat_mask=mask, clip_vision=clip)
    out = tmp_path / "i2v-latent.safetensors"
    assert main(["--weights", str(i2v), *_base(inputs), "--image", files, "--out", str(out)]) == 0
    embeddings = load_file(inputs[inputs.index("--text-embeddings") + 1])
    spec = tiny_spec("i2v", clip_dim=48, **TINY)
    shape = (1, 16, 2, 4, 8)
    channels = model_image_input(spec, shape, image, mask)  # the node's own function (against ComfyUI's: tier tests)
    request = SampleRequest(
        embeddings["positive"][None], embeddings["negative"][None], torch.zeros(shape), seed=7, steps=3, cfg=4.5,
        shift=8.0, sampler="euler", scheduler="simple", positive_image=channels, negative_image=channels,
        positive_clip=clip[None], negative_clip=clip[None],
    )  # fmt: skip
    expected = WanEngine.build(Recipe(str(i2v), compute_dtype="fp32"), "cpu").sample(request).latent
    got = load_file(str(out))["latent"]
    assert torch.equal(got, expected)
    # both parts of the image reach the model: another image latent or other CLIP features change the result
    for other in ({"positive_image": channels.flip(2)}, {"positive_clip": clip[None].flip(1) + 1.0}):
        changed = WanEngine.build(Recipe(str(i2v), compute_dtype="fp32"), "cpu").sample(
            dataclasses.replace(request, **other)
        )
        assert not torch.equal(changed.latent, got)


def test_a_ti2v_start_latent_is_kept_as_the_first_latent_frame(inputs, tmp_path):
    from dax_core.models.tiny import write_tiny_model

    ti2v = write_tiny_model(tmp_path / "ti2v.safetensors", seed=4, variant="ti2v", **TINY)
    start = torch.randn(1, 48, 1, 2, 4, generator=torch.Generator().manual_seed(10))
    out = tmp_path / "ti2v-latent.safetensors"
    image = _image_file(tmp_path, start_latent=start)
    assert main(["--weights", str(ti2v), *_base(inputs), "--image", image, "--out", str(out)]) == 0
    got = load_file(str(out))["latent"]
    # as Wan22ImageToVideoLatent's noise mask keeps it (0 there): the start frame comes back as it went in, but for the
    # float32 rounding of the latent format's normalisation and back (~1e-7); the other frame is sampled
    torch.testing.assert_close(got[:, :, :1], start, rtol=1e-5, atol=1e-5)
    assert got[:, :, 1:].abs().max() > 0
    plain = tmp_path / "ti2v-plain.safetensors"
    assert main(["--weights", str(ti2v), *_base(inputs), "--out", str(plain)]) == 0
    assert not torch.equal(load_file(str(plain))["latent"][:, :, 1:], got[:, :, 1:])  # the start frame conditions it


@pytest.mark.parametrize(
    ("variant", "tensors", "message"),
    [
        ("i2v", None, "needs the start image: pass --image FILE"),
        ("i2v", {"start_image": torch.zeros(1, 3, 32, 64)}, r"holds \['start_image'\]; an --image file holds"),
        ("i2v", {"start_latent": torch.zeros(1, 16, 1, 4, 8)}, "start_latent is Wan2.2 TI2V 5B's start image"),
        ("ti2v", {"start_latent": torch.zeros(1, 16, 1, 2, 4)}, r"the start latent is \(1, 16, 1, 2, 4\)"),
        ("t2v", {"concat_latent_image": torch.zeros(1, 16, 2, 4, 8)}, "which takes none"),
    ],
)
def test_image_input_that_does_not_fit_is_refused_before_loading(inputs, tmp_path, capsys, variant, tensors, message):
    from dax_core.models.tiny import write_tiny_model

    weights = write_tiny_model(tmp_path / f"{variant}.safetensors", variant=variant, clip_dim=48, **TINY)
    image = [] if tensors is None else ["--image", _image_file(tmp_path, **tensors)]
    out = tmp_path / "latent.safetensors"
    with pytest.raises(SystemExit):
        main(["--weights", str(weights), *_base(inputs), *image, "--out", str(out)])
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()
