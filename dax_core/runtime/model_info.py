"""The model a recipe builds, as the recipe carries it (resolved once, by Load Wan DAX), and the spec of each of
its experts checked against the recipe's model choice."""

from __future__ import annotations

from ..experts import MODEL_CHOICES
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


def recipe_spec(recipe: Recipe) -> WanSpec:
    """The WanSpec of ``recipe``'s model (of each expert, for a two-expert recipe).

    Raises WeightsError, naming the file, where a file is not what the recipe's model choice says: an expert of
    another variant (a Wan2.2 TI2V file chosen as an A14B expert), or two experts of different shapes. The low-noise
    expert's header is read here (the recipe's resolved model is the first file's).
    """
    choice = MODEL_CHOICES[recipe.model_choice]
    spec = recipe_model(recipe).spec
    if choice.model_type and spec.model_type != choice.model_type:
        raise WeightsError(
            f"{recipe.weights}: a {spec.model_type} model ({spec.name}), not a {choice.model_type} expert as "
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
