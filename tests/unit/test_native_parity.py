"""The DAX engine against ComfyUI's own KSampler on ComfyUI's own WanModel, same weights, same seed.

This checks everything between the nodes and the model at once: the initial noise for a seed, the latent
normalisation on the way in and out, the flow timestep scale, the shift schedule, classifier-free guidance
and the Euler update.
"""

from __future__ import annotations

import pytest
import torch

from dax_core.models.spec import WanSpec
from dax_core.models.tiny import random_state_dict
from dax_core.models.wan import WanModel
from dax_core.recipe import Recipe
from dax_core.runtime.engine import SampleRequest, WanEngine
from tests.numerics import rel_error

# ComfyUI reads Wan's head count as dim // 128 and fixes the text width at 4096: the spec follows both.
SPEC = WanSpec(dim=256, num_layers=2, num_heads=2, ffn_dim=256, text_dim=4096)


@pytest.fixture(scope="module")
def native(comfyui_importable):
    import comfy.sample
    import comfy.sd

    return comfy.sd, comfy.sample


@pytest.mark.parametrize("cfg", [1.0, 4.5])
def test_engine_matches_native_ksampler(native, cfg):
    sd_mod, sample_mod = native
    state = random_state_dict(SPEC, seed=3)
    patcher = sd_mod.load_diffusion_model_state_dict(dict(state), model_options={"dtype": torch.float32})
    assert patcher is not None, "ComfyUI did not recognise the Wan state dict"

    ours = WanModel(SPEC, dtype=torch.float32)
    ours.load_state_dict(state)
    engine = WanEngine(ours.eval(), Recipe("unused.safetensors", compute_dtype="fp32"), "cpu")

    g = torch.Generator().manual_seed(7)
    pos = torch.randn(1, 6, SPEC.text_dim, generator=g)
    neg = torch.randn(1, 6, SPEC.text_dim, generator=g)
    latent = torch.zeros(1, 16, 3, 4, 6)
    seed, steps, shift = 1234, 4, 8.0

    # native: ComfyUI's shift is a property of the model's sampling object (ModelSamplingSD3 node's job)
    import comfy.model_sampling

    class FlowSampling(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
        pass

    sampling = FlowSampling(patcher.model.model_config)
    sampling.set_parameters(shift=shift, multiplier=1000)
    patcher.add_object_patch("model_sampling", sampling)
    noise = sample_mod.prepare_noise(latent, seed)
    native_out = sample_mod.sample(
        patcher, noise, steps, cfg, "euler", "simple", [[pos, {}]], [[neg, {}]], latent, disable_pbar=True, seed=seed
    )

    result = engine.sample(
        SampleRequest(positive=pos, negative=neg, latent=latent, seed=seed, steps=steps, cfg=cfg, shift=shift,
                      sampler="euler", scheduler="simple")
    )  # fmt: skip
    rel = rel_error(result.latent, native_out)
    # float32 on both sides: the models agree to ~1e-6 per call (see test_model_reference); a wrong noise
    # seed, normalisation, timestep scale or guidance formula gives errors of order 1
    assert rel < 1e-4, rel
