"""The spec of the model a recipe builds, from its weights files' headers and the recipe's model choice."""

from __future__ import annotations

from ..experts import MODEL_CHOICES
from ..recipe import Recipe
from .loading import inspect_weights
from .spec import WanSpec
from .weights_error import WeightsError


def recipe_spec(recipe: Recipe) -> WanSpec:
    """The WanSpec of ``recipe``'s model (of each expert, for a two-expert recipe), read from the headers only.

    Raises WeightsError, naming the file, where a file is not what the recipe's model choice says: an expert of
    another variant (a Wan2.2 TI2V file chosen as an A14B expert), or two experts of different shapes.
    """
    choice = MODEL_CHOICES[recipe.model]
    spec = inspect_weights(recipe.weights).spec
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
