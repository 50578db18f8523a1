"""LoRA tensor names: which parameter of a Wan model each key of a LoRA file changes, and in what role.

A key is ``[prefix]module.suffix``:

- prefix: ``diffusion_model.`` / ``model.diffusion_model.`` (ComfyUI, lightx2v, kijai), ``transformer.`` /
  ``base_model.model.`` (diffusers, PEFT), none (bare Wan names), or ``lora_unet_`` / ``lora_transformer_`` /
  ``lycoris_`` (kohya, musubi-tuner, OneTrainer, SimpleTuner: the module name written with ``_`` for ``.``);
- module: a Wan name (``blocks.0.self_attn.q``) or a diffusers name (``blocks.0.attn1.to_q``), as
  ``dax_core.models.naming`` maps them; the module's own parameter may be named too (``blocks.0.modulation``);
- suffix: ``lora_up.weight`` / ``lora_B.weight`` (up, ``[out, rank]``), ``lora_down.weight`` / ``lora_A.weight``
  (down, ``[rank, in]``), ``alpha``, ``diff`` (the whole change of the module's weight, or of the parameter the
  key names), ``diff_b`` / ``lora_B.bias`` (the change of its bias), ``diff_m`` (the change of the modulation
  of a block or of the head: ``blocks.N.diff_m``, ``head.diff_m``).

Kinds of adapters that change a weight in other ways (DoRA's ``dora_scale``, LoCon's ``lora_mid``, LyCORIS LoHa and
LoKr, OFT) are refused by name: merging the rest of such a file would make another model than the one it was
trained as.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from ..models.naming import diffusers_to_wan, wan_to_diffusers

UP, DOWN, ALPHA, DIFF = "up", "down", "alpha", "diff"
PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.")
UNDERSCORE_PREFIXES = ("lora_unet__", "lora_unet_", "lora_transformer_", "lycoris_")  # "__": Wan Fun's kohya files
# suffix -> (role, what the key's module names: "weight", "bias" or "modulation"); longest suffixes first
SUFFIXES: dict[str, tuple[str, str]] = {
    ".lora_down.weight": (DOWN, "weight"),
    ".lora_up.weight": (UP, "weight"),
    ".lora_A.weight": (DOWN, "weight"),
    ".lora_B.weight": (UP, "weight"),
    ".lora_B.bias": (DIFF, "bias"),
    ".diff_b": (DIFF, "bias"),
    ".diff_m": (DIFF, "modulation"),
    ".alpha": (ALPHA, "weight"),
    ".diff": (DIFF, "weight"),
}
# a name part -> the kind of adapter it belongs to, which DAX does not merge
UNSUPPORTED = {
    "dora_scale": "DoRA (dora_scale)",
    "lora_mid": "LoCon with a Tucker middle factor (lora_mid)",
    "hada_": "LyCORIS LoHa (hada_*)",
    "lokr_": "LyCORIS LoKr (lokr_*)",
    "oft_": "OFT (oft_*)",
    "w_norm": "a norm replacement (w_norm)",
    "b_norm": "a norm replacement (b_norm)",
    "set_weight": "a weight replacement (set_weight)",
}


@dataclass(frozen=True)
class KeyTarget:
    """What one LoRA key does: its ``role`` for the parameter ``param`` (a Wan name); ``source`` is the key without
    its suffix, which the up, down and alpha of one low-rank pair share."""

    param: str
    role: str
    source: str


class UnsupportedKey(ValueError):
    """A key of a kind of adapter DAX does not merge, on a layer of the model."""


class KeyMap:
    """Resolves LoRA keys against the parameter names of one model (Wan names, e.g. from ``expected_shapes``)."""

    def __init__(self, param_names: Collection[str]) -> None:
        self.params = frozenset(param_names)
        names = set(self.params)  # a key may name a parameter itself (blocks.0.modulation.diff)
        for param in self.params:
            parts = param.split(".")
            names.update(".".join(parts[:i]) for i in range(1, len(parts)))
        self._names = frozenset(names)
        underscored: dict[str, str | None] = {}
        for name in sorted(names):
            spellings = {name.replace(".", "_")}
            if name in self.params or f"{name}.weight" in self.params:
                try:
                    spellings.add(wan_to_diffusers(name).replace(".", "_"))
                except KeyError:
                    pass
            for spelling in spellings:  # two names with one spelling: neither is taken
                underscored[spelling] = name if underscored.get(spelling, name) == name else None
        self._underscored = underscored

    def module(self, name: str) -> str | None:
        """The Wan name of a (prefix-stripped) module or parameter name in any naming; None for no such name."""
        if name in self._names:
            return name
        try:
            renamed = diffusers_to_wan(name)
        except KeyError:
            renamed = None
        if renamed in self._names:
            return renamed
        if "." not in name:
            return self._underscored.get(name)
        return None

    def target(self, key: str) -> KeyTarget | None:
        """What ``key`` changes, or None if it names nothing of this model. Raises UnsupportedKey for a kind of
        adapter DAX does not merge on a layer this model has."""
        suffix = next((s for s in SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            self._refuse_unsupported(key)
            return None
        source = key[: -len(suffix)]
        module = self.module(_strip_prefix(source))
        if module is None:
            return None
        role, leaf = SUFFIXES[suffix]
        param = f"{module}.{leaf}"
        if leaf == "weight" and param not in self.params and module in self.params:
            param = module  # the key names the parameter itself (a modulation)
        return KeyTarget(param, role, source) if param in self.params else None

    def _refuse_unsupported(self, key: str) -> None:
        head, _, tail = key.rpartition(".")
        if tail == "weight":
            head, _, tail = head.rpartition(".")
        kind = next((what for marker, what in UNSUPPORTED.items() if tail.startswith(marker)), None)
        if kind is not None and self.module(_strip_prefix(head)) is not None:
            raise UnsupportedKey(f"{key} belongs to {kind}, which DAX does not merge")


def _strip_prefix(name: str) -> str:
    for prefix in UNDERSCORE_PREFIXES + PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name
