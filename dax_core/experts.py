"""Which Wan model a weights file is, where its shapes cannot say: the user's model choice at Load.

A Wan2.2 A14B expert (T2V or I2V, high-noise or low-noise) has exactly the shapes of a Wan2.1 14B model, so it is
never guessed from its file: Load Wan DAX's model choice names it, the recipe carries the choice, and what depends
on the model's identity (the expert boundary, step-cache calibrations) reads it from there. Plain data, importing
nothing of the engine: the recipe validates its choice against this table.

Expert boundaries from the official Wan2.2 configurations (``wan/configs/wan_t2v_A14B.py``: ``boundary = 0.875``;
``wan_i2v_A14B.py``: ``0.900``), where a step whose timestep is at least ``boundary * num_train_timesteps`` (1000)
runs the high-noise expert and every later step the low-noise one.
"""

from __future__ import annotations

from dataclasses import dataclass

AUTO = "auto"
EXPERTS = ("high", "low")  # the high-noise expert runs first


@dataclass(frozen=True)
class ModelChoice:
    """One entry of Load Wan DAX's model choice."""

    key: str
    description: str
    family: str = ""  # the two-expert model it belongs to ("" for a model read from its file alone)
    expert: str = ""  # "high", "low", "pair" (both, one DAX_MODEL) or "" (no experts)
    boundary: float | None = None  # the sigma (timestep / 1000) at and above which the high-noise expert runs
    model_type: str = ""  # the WanSpec.model_type each expert must have ("" for any the file shows)
    clip: bool = False  # whether each expert takes CLIP-vision features (WanSpec.takes_clip): none of Wan2.2's do

    @property
    def is_pair(self) -> bool:
        return self.expert == "pair"

    @property
    def is_wan22(self) -> bool:
        return bool(self.family)


def _a14b(family: str, task: str, boundary: float, model_type: str) -> dict[str, ModelChoice]:
    return {
        family: ModelChoice(
            family, f"Wan2.2 {task} A14B: high-noise expert + low-noise expert", family, "pair", boundary, model_type
        ),
        f"{family}-high": ModelChoice(
            f"{family}-high", f"Wan2.2 {task} A14B, the high-noise expert alone", family, "high", boundary, model_type
        ),
        f"{family}-low": ModelChoice(
            f"{family}-low", f"Wan2.2 {task} A14B, the low-noise expert alone", family, "low", boundary, model_type
        ),
    }


MODEL_CHOICES: dict[str, ModelChoice] = {
    AUTO: ModelChoice(AUTO, "read from the file: Wan2.1 T2V (1.3B, 14B), I2V, FLF2V or Wan2.2 TI2V 5B"),
    **_a14b("wan2.2-t2v-a14b", "T2V", 0.875, "t2v"),
    **_a14b("wan2.2-i2v-a14b", "I2V", 0.900, "i2v"),  # 36 channels in, no CLIP features (WanSpec.clip_dim 0)
}


def model_choice(key: str) -> ModelChoice:
    """The choice of ``key``; ValueError listing the choices for any other."""
    if key not in MODEL_CHOICES:
        raise ValueError(f"model {key!r} is not one of {', '.join(MODEL_CHOICES)}")
    return MODEL_CHOICES[key]
