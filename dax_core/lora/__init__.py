"""LoRAs for the Wan DiT: key names in every format found in the wild, header checks, and merging into the weights.

``lora_ref(path, strength)`` makes a recipe entry; ``plan_lora(path, spec)`` checks a file against a model size from
its header; the engine merges a recipe's LoRAs when it builds the model (``recipe_deltas``) and on a built model when
only its LoRAs change (``merge_again``). See docs/lora.md.
"""

from .files import lora_fingerprint, lora_ref
from .plan import LoraError, LoraPlan, plan_lora

__all__ = ["LoraError", "LoraPlan", "lora_fingerprint", "lora_ref", "plan_lora"]
