"""The model a recipe builds, as the recipe carries it (resolved once, by Load Wan DAX), and the spec of each of
its experts checked against the recipe's model choice."""

from __future__ import annotations

import dataclasses

from ..experts import EXPERTS, MODEL_CHOICES
from ..models.info import ModelInfo
from ..models.loading import inspect_weights
from ..models.spec import WanSpec
from ..models.weights_error import WeightsError
from ..recipe import Recipe


def recipe_model(recipe: Recipe) -> ModelInfo:
    """``recipe.model``; a recipe made without one (in code, not by Load Wan DAX) has its weights' headers read
    here, once per call: pass ``dataclasses.replace(recipe, model=...)`` along to read them once."""
    if recipe.model is not None:
        return recipe.model
    return inspect_weights(recipe.weights).model


def chosen_model(read: ModelInfo, choice: str) -> ModelInfo:
    """The model of a file as read from its header (``read``), named by the user's model choice where the header
    cannot say: a Wan2.2 A14B expert is family "wan2.2", variant the choice's model (e.g. "wan2.2-t2v-a14b") and,
    for one expert (or the first file of a pair: the high-noise expert), which one."""
    model = MODEL_CHOICES[choice]
    if not model.is_wan22:
        return read
    expert = model.expert if model.expert in EXPERTS else EXPERTS[0]
    return dataclasses.replace(read, variant=model.family, family="wan2.2", expert=expert)


def recipe_spec(recipe: Recipe) -> WanSpec:
    """The WanSpec of ``recipe``'s model (of each expert, for a two-expert recipe).

    Raises WeightsError, naming the file, where a file is not what the recipe's model choice says: an expert of
    another variant (a Wan2.2 TI2V file chosen as an A14B expert), or two experts of different shapes. The low-noise
    expert's header is read here (the recipe's resolved model is the first file's).
    """
    choice = MODEL_CHOICES[recipe.model_choice]
    spec = recipe_model(recipe).spec
    if choice.model_type and (spec.model_type, spec.takes_clip) != (choice.model_type, choice.clip):
        clip = " with CLIP-vision features" if spec.takes_clip else ""
        raise WeightsError(
            f"{recipe.weights}: a {spec.model_type} model{clip} ({spec.name}), not a {choice.model_type} expert as "
            f"{choice.description} has: pick that model's expert file, or the model choice 'auto'"
        )
    if recipe.low_noise_weights is not None:
        low = inspect_weights(recipe.low_noise_weights).spec
        if low != spec:
            raise WeightsError(
                f"{recipe.low_noise_weights}: the low-noise expert's shapes ({low.name}) differ from the high-noise "
                f"expert's ({spec.name}, {recipe.weights}): pick the two experts of one Wan2.2 A14B model"
            )
    return spec
