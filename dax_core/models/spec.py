"""Wan DiT sizes and variants: the published configurations and any size read from weights."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

VAE_SPATIAL_STRIDE = 8
"""Pixels per latent cell along the height and the width (the Wan2.1 VAE's compression): sizes in messages are in
pixels, the unit the user chose them in."""
WAN22_VAE_SPATIAL_STRIDE = 16
"""The same for the Wan2.2 VAE, whose 48-channel latent compresses 16x along the height and the width."""
WAN22_LATENT_CHANNELS = 48

MODEL_TYPES: tuple[str, ...] = ("t2v", "i2v", "flf2v", "ti2v")
"""What a Wan DiT is conditioned on: text ("t2v"), text and a CLIP-vision image ("i2v"), a first and a last frame
("flf2v"), or text and an optional first frame in the latent itself, with per-token timesteps (Wan2.2 "ti2v")."""


@dataclass(frozen=True)
class WanSpec:
    """Shape and variant of a Wan DiT. Validated at construction."""

    dim: int
    num_layers: int
    num_heads: int
    ffn_dim: int
    text_dim: int = 4096
    freq_dim: int = 256
    in_dim: int = 16
    out_dim: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    cross_attn_norm: bool = True
    model_type: str = "t2v"

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"WanSpec.model_type must be one of {', '.join(MODEL_TYPES)}, got {self.model_type!r}")
        for name in ("dim", "num_layers", "num_heads", "ffn_dim", "text_dim", "freq_dim", "in_dim", "out_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"WanSpec.{name} must be a positive integer, got {value!r}")
        if self.dim % self.num_heads:
            raise ValueError(f"WanSpec: dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"WanSpec: head dim {self.head_dim} must be even for rotary embeddings")
        if self.freq_dim % 2:
            raise ValueError(f"WanSpec: freq_dim {self.freq_dim} must be even")
        if len(self.patch_size) != 3 or any(p <= 0 for p in self.patch_size):
            raise ValueError(f"WanSpec: patch_size must be three positive ints, got {self.patch_size!r}")
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def rope_axes(self) -> tuple[int, int, int]:
        """Channels of each head given to the frame, height and width rotary axes (Wan's split)."""
        d = self.head_dim
        return (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6))

    @property
    def per_token_timesteps(self) -> bool:
        """Whether the model takes a timestep per latent frame (Wan2.2 TI2V: a given first frame is at t = 0), as
        ComfyUI's WAN22 model derives it from the latent's noise mask."""
        return self.model_type == "ti2v"

    @property
    def latent_channels(self) -> int:
        """Channels of the VAE latent the model denoises (16: the Wan2.1 VAE; 48: the Wan2.2 VAE)."""
        return self.out_dim

    @property
    def vae_spatial_stride(self) -> int:
        """Pixels per latent cell of the VAE whose latent this model denoises."""
        return WAN22_VAE_SPATIAL_STRIDE if self.latent_channels == WAN22_LATENT_CHANNELS else VAE_SPATIAL_STRIDE

    @property
    def name(self) -> str:
        for preset_name, preset in PRESETS.items():
            if preset == self:
                return preset_name
        return f"custom-d{self.dim}-l{self.num_layers}-h{self.num_heads}"

    def check_latent(self, shape: Sequence[int]) -> None:
        """Raise ValueError, saying what to change, unless a latent of ``shape`` fits this model.

        One check for the model's forward and for a request checked before it reaches a worker group, where an
        error inside the ranks would end the whole group.
        """
        shape = tuple(shape)
        if len(shape) != 5 or shape[1] != self.in_dim:
            source = (
                "use Wan22ImageToVideoLatent (with the Wan2.2 VAE) for the latent"
                if self.in_dim == WAN22_LATENT_CHANNELS
                else "use EmptyHunyuanLatentVideo (or a Wan VAE encode) for the latent"
            )
            raise ValueError(
                f"expected a video latent [B, {self.in_dim}, frames, height, width], got shape {shape}: {source}"
            )
        pt, ph, pw = self.patch_size
        if shape[2] % pt:
            raise ValueError(f"the latent's {shape[2]} frames are not a multiple of the patch's {pt}")
        for axis, size, patch in (("height", shape[3], ph), ("width", shape[4], pw)):
            if size % patch:
                step, pixels = patch * self.vae_spatial_stride, size * self.vae_spatial_stride
                lower = pixels // step * step
                use = f"{lower} or {lower + step}" if lower else str(step)
                raise ValueError(
                    f"{axis} {pixels} is not a multiple of {step}: use {use} (the latent's {axis} {size} must be a "
                    f"multiple of the model's patch, {patch})"
                )

    def check_text(self, shape: Sequence[int], name: str = "the text embedding") -> None:
        """Raise ValueError unless ``shape`` is a text embedding [B, tokens, text_dim] of this model's width."""
        shape = tuple(shape)
        if len(shape) != 3 or shape[2] != self.text_dim:
            raise ValueError(
                f"{name} must be [B, tokens, {self.text_dim}], got {shape}: this model takes "
                f"{self.text_dim}-wide text; encode the prompt with the model's text encoder (umt5-xxl for Wan2.1, "
                "4096 wide: CLIPLoader with type wan)"
            )

    def to_dict(self) -> dict:
        out = asdict(self)
        out["patch_size"] = list(self.patch_size)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> WanSpec:
        data = dict(data)
        if "patch_size" in data:
            data["patch_size"] = tuple(data["patch_size"])
        return cls(**data)

    def parameter_count(self) -> int:
        """Number of parameters of the model this spec builds."""
        d, f, t, fq = self.dim, self.ffn_dim, self.text_dim, self.freq_dim
        p = self.patch_size[0] * self.patch_size[1] * self.patch_size[2]
        embed = self.in_dim * p * d + d  # patch embedding
        embed += t * d + d + d * d + d  # text embedding
        embed += fq * d + d + d * d + d + d * 6 * d + 6 * d  # time embedding + projection
        block = 4 * (d * d + d) + 2 * d  # self attention
        block += 4 * (d * d + d) + 2 * d  # cross attention
        block += (2 * d if self.cross_attn_norm else 0) + d * f + f + f * d + d + 6 * d
        head = d * self.out_dim * p + self.out_dim * p + 2 * d
        return embed + self.num_layers * block + head


WAN21_T2V_1_3B = WanSpec(dim=1536, num_layers=30, num_heads=12, ffn_dim=8960)
WAN21_T2V_14B = WanSpec(dim=5120, num_layers=40, num_heads=40, ffn_dim=13824)
WAN22_TI2V_5B = WanSpec(dim=3072, num_layers=30, num_heads=24, ffn_dim=14336, in_dim=48, out_dim=48, model_type="ti2v")
"""Wan2.2 TI2V 5B, from the official configuration (wan/configs/wan_ti2v_5B.py: dim 3072, ffn 14336, 30 layers,
24 heads, in and out 48 channels, patch (1, 2, 2), freq 256, text 4096, eps 1e-6)."""
WAN22_T2V_A14B = WAN21_T2V_14B
"""Each expert of Wan2.2 T2V A14B (and I2V A14B's in 36 channels) has exactly Wan2.1 14B's shapes: which model an
expert file is can only be said by the user (Load Wan DAX's model choice), never read from the file."""

PRESETS: dict[str, WanSpec] = {
    "wan2.1-t2v-1.3b": WAN21_T2V_1_3B,
    "wan2.1-t2v-14b": WAN21_T2V_14B,
    "wan2.2-ti2v-5b": WAN22_TI2V_5B,
    "wan2.2-t2v-a14b": WAN22_T2V_A14B,
}
