"""The model a recipe builds, as the recipe carries it (resolved once, by Load Wan DAX)."""

from __future__ import annotations

from ..models.info import ModelInfo
from ..models.loading import inspect_weights
from ..recipe import Recipe


def recipe_model(recipe: Recipe) -> ModelInfo:
    """``recipe.model``; a recipe made without one (in code, not by Load Wan DAX) has its weights' headers read
    here, once per call: pass ``dataclasses.replace(recipe, model=...)`` along to read them once."""
    if recipe.model is not None:
        return recipe.model
    return inspect_weights(recipe.weights).model
