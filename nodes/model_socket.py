"""The DAX_MODEL socket every DAX node shares: its input spec and tooltips."""

from __future__ import annotations

DAX_MODEL_TOOLTIP = (
    "A Wan model recipe from Load Wan DAX, or from another DAX node after it. Nothing is loaded yet: the "
    "Multi-GPU Sampler builds the model once and keeps it while the recipe stays the same."
)


def dax_model_input(tooltip: str = DAX_MODEL_TOOLTIP) -> tuple[str, dict]:
    """The ``dax_model`` input socket."""
    return ("DAX_MODEL", {"tooltip": tooltip})


def patched_model_tooltip(what: str) -> str:
    """The output tooltip of a node that returns a new recipe: the input's, with ``what`` added."""
    return f"A new DAX_MODEL with {what} (the input is unchanged): connect it to the next DAX node or the sampler."
