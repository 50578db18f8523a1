"""Wan DiT shapes and variants: the published configurations and any size read from weights.

A variant is data: ``model_type`` and the fields beside it decide what ``WanModel`` builds (input channels, the image
cross-attention and image embedding, per-token timesteps), what the loader expects and what the sampler must be
given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

MODEL_TYPES: tuple[str, ...] = ("t2v", "i2v", "flf2v", "ti2v")
"""What a Wan DiT is conditioned on: text ("t2v"), text and a start image ("i2v"), a first and a last frame
("flf2v"), or text and an optional first frame in the latent itself, with per-token timesteps (Wan2.2 "ti2v")."""
IMAGE_MODEL_TYPES = ("i2v", "flf2v")
"""Variants that take the image latent and a mask concatenated to the noise; whether they also take CLIP-vision
features (an image cross-attention beside the text one) is ``WanSpec.clip_dim``'s (0: none, Wan2.2 I2V A14B)."""
CLIP_IMAGE_TOKENS = 257
"""Tokens of one image in CLIP ViT-H/14's penultimate hidden states at 224 px (1 class + 16 x 16 patches)."""

VAE_SPATIAL_STRIDE = 8
"""Pixels per latent cell along the height and the width (the Wan2.1 VAE's compression): sizes in messages are in
pixels, the unit the user chose them in."""
WAN22_VAE_SPATIAL_STRIDE = 16
"""The same for the Wan2.2 VAE, whose 48-channel latent compresses 16x along the height and the width."""
WAN22_LATENT_CHANNELS = 48


@dataclass(frozen=True)
class WanSpec:
    """Shape and variant of a Wan DiT. Validated at construction.

    ``model_type``: one of ``MODEL_TYPES``. The image variants ("i2v", "flf2v") take ``in_dim`` = noise + 4 mask +
    image-latent channels (36 for 16-channel latents) and, where ``clip_dim`` > 0, CLIP-vision features ``clip_dim``
    wide through an image embedding and an image cross-attention (Wan2.1 I2V, FLF2V: 1280). ``clip_dim`` 0 is an
    image-to-video model without CLIP (Wan2.2 I2V A14B: the image reaches it through the latent alone); FLF2V always
    takes CLIP features. Text-only variants ignore ``clip_dim``. FLF2V adds a learned positional embedding over
    ``image_pos_tokens`` image tokens (514 = 2 images x 257), which other variants leave at 0.
    """

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
    clip_dim: int = 1280
    image_pos_tokens: int = 0

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"WanSpec.model_type {self.model_type!r} is not one of {', '.join(MODEL_TYPES)}")
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
        self._check_image_fields()

    def _check_image_fields(self) -> None:
        if not isinstance(self.clip_dim, int) or self.clip_dim < 0:
            raise ValueError(
                f"WanSpec.clip_dim must be an integer >= 0 (0: no CLIP-vision features), got {self.clip_dim!r}"
            )
        if self.model_type == "flf2v" and self.clip_dim == 0:
            raise ValueError(
                "WanSpec: an flf2v model takes both frames' CLIP-vision features: clip_dim must be positive (1280)"
            )
        tokens = self.image_pos_tokens
        if not isinstance(tokens, int) or tokens < 0:
            raise ValueError(f"WanSpec.image_pos_tokens must be an integer >= 0, got {tokens!r}")
        if (self.model_type == "flf2v") != (tokens > 0):
            raise ValueError(
                f"WanSpec: image_pos_tokens {tokens} with model_type {self.model_type!r}: FLF2V models have a "
                f"positional embedding over their image tokens (2 x {CLIP_IMAGE_TOKENS} = {2 * CLIP_IMAGE_TOKENS}), "
                "other variants none (0)"
            )
        if self.takes_image_latent and self.in_dim != 2 * self.out_dim + 4:
            raise ValueError(
                f"WanSpec: a {self.model_type} model takes noise, a 4-channel mask and the image latent "
                f"({2 * self.out_dim + 4} channels for {self.out_dim}-channel latents), got in_dim {self.in_dim}"
            )

    @property
    def takes_image_latent(self) -> bool:
        """Whether the model takes the mask and the image latent concatenated to the noise (I2V, FLF2V)."""
        return self.model_type in IMAGE_MODEL_TYPES

    @property
    def takes_clip(self) -> bool:
        """Whether the model takes CLIP-vision features (an image embedding and an image cross-attention): Wan2.1
        I2V and FLF2V; not Wan2.2 I2V A14B (``clip_dim`` 0) nor the text-only variants."""
        return self.takes_image_latent and self.clip_dim > 0

    @property
    def latent_channels(self) -> int:
        """Channels of the VAE latent the sampler denoises (16: the Wan2.1 VAE; 48: the Wan2.2 VAE): the model's
        output; an image model's input adds the image's."""
        return self.out_dim

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
    def vae_spatial_stride(self) -> int:
        """Pixels per latent cell of the VAE whose latent this model denoises."""
        return WAN22_VAE_SPATIAL_STRIDE if self.latent_channels == WAN22_LATENT_CHANNELS else VAE_SPATIAL_STRIDE

    @property
    def name(self) -> str:
        for preset_name, preset in PRESETS.items():
            if preset == self:
                return preset_name
        kind = "" if self.model_type == "t2v" else f"{self.model_type}-"
        if self.takes_image_latent and not self.takes_clip:
            kind += "noclip-"
        return f"custom-{kind}d{self.dim}-l{self.num_layers}-h{self.num_heads}"

    def check_latent(self, shape: Sequence[int], channels: int | None = None) -> None:
        """Raise ValueError, saying what to change, unless a latent of ``shape`` fits this model.

        One check for the model's forward (``channels`` None: the model's input, ``in_dim``) and for a request
        checked before it reaches a worker group (``latent_channels``), where an error inside the ranks would end
        the whole group.
        """
        shape = tuple(shape)
        channels = self.in_dim if channels is None else channels
        if len(shape) != 5 or shape[1] != channels:
            source = (
                "use Wan22ImageToVideoLatent (with the Wan2.2 VAE) for the latent"
                if channels == WAN22_LATENT_CHANNELS
                else "use EmptyHunyuanLatentVideo (or a Wan VAE encode) for the latent"
            )
            raise ValueError(
                f"expected a video latent [B, {channels}, frames, height, width], got shape {shape}: {source}"
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

    def check_image_features(self, shape: Sequence[int] | None, batch: int) -> None:
        """Raise ValueError, saying what to change, unless CLIP-vision features of ``shape`` (None: none given) fit
        this model's forward of ``batch`` rows: a model with CLIP features (``takes_clip``) needs them, [batch or 1,
        tokens, clip_dim], and a model without image cross-attention takes none (a sampler drops the features a
        Wan2.2 I2V A14B model cannot use before its forward, as ComfyUI does, and says so)."""
        if not self.takes_clip:
            if shape is not None:
                raise ValueError(
                    f"this {self.model_type} model has no image cross-attention, but CLIP-vision features were given: "
                    "use a Wan2.1 image-to-video (I2V) or first-last-frame (FLF2V) model, or leave clip_vision_output "
                    "unconnected"
                )
            return
        if shape is None:
            raise ValueError(
                f"this {self.model_type} model needs the CLIP-vision features of its image: connect CLIPVisionEncode "
                "(crop none, CLIP ViT-H) to the clip_vision_output input of WanImageToVideo / WanFirstLastFrameToVideo"
            )
        shape = tuple(shape)
        if len(shape) != 3 or shape[0] not in (1, batch) or shape[2] != self.clip_dim or shape[1] < 1:
            raise ValueError(
                f"CLIP-vision features must be [{batch} or 1, tokens, {self.clip_dim}] (CLIP ViT-H penultimate hidden "
                f"states), got {shape}: encode the image with the Wan2.1 CLIP vision model (clip_vision_h)"
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
        if self.takes_clip:
            c = self.clip_dim
            block += 2 * (d * d + d) + d  # k_img, v_img, norm_k_img
            embed += 2 * c + c * c + c + c * d + d + 2 * d + self.image_pos_tokens * c  # img_emb
        return embed + self.num_layers * block + head


WAN21_T2V_1_3B = WanSpec(dim=1536, num_layers=30, num_heads=12, ffn_dim=8960)
WAN21_T2V_14B = WanSpec(dim=5120, num_layers=40, num_heads=40, ffn_dim=13824)
WAN22_TI2V_5B = WanSpec(dim=3072, num_layers=30, num_heads=24, ffn_dim=14336, in_dim=48, out_dim=48, model_type="ti2v")
"""Wan2.2 TI2V 5B, from the official configuration (wan/configs/wan_ti2v_5B.py: dim 3072, ffn 14336, 30 layers,
24 heads, in and out 48 channels, patch (1, 2, 2), freq 256, text 4096, eps 1e-6)."""
WAN22_T2V_A14B = WAN21_T2V_14B
"""Each expert of Wan2.2 T2V A14B has exactly Wan2.1 T2V 14B's shapes: which model an expert file is can only be said
by the user (Load Wan DAX's model choice), never read from the file."""
WAN22_I2V_A14B = WanSpec(dim=5120, num_layers=40, num_heads=40, ffn_dim=13824, in_dim=36, model_type="i2v", clip_dim=0)
"""Each expert of Wan2.2 I2V A14B (wan/configs/wan_i2v_A14B.py: Wan2.1 14B's shapes, 36 input channels, no CLIP
image embedding nor image cross-attention): the start image reaches it through the concatenated image latent alone.
No Wan2.1 model has these shapes, but which expert a file is (high- or low-noise) only the user can say."""

WAN21_I2V_14B = WanSpec(dim=5120, num_layers=40, num_heads=40, ffn_dim=13824, in_dim=36, model_type="i2v")
"""Wan2.1 I2V 14B: the 480p and the 720p files share these shapes."""
WAN21_FLF2V_14B = WanSpec(
    dim=5120, num_layers=40, num_heads=40, ffn_dim=13824, in_dim=36, model_type="flf2v", image_pos_tokens=514
)

PRESETS: dict[str, WanSpec] = {
    "wan2.1-t2v-1.3b": WAN21_T2V_1_3B,
    "wan2.1-t2v-14b": WAN21_T2V_14B,
    "wan2.1-i2v-14b": WAN21_I2V_14B,
    "wan2.1-flf2v-14b": WAN21_FLF2V_14B,
    "wan2.2-ti2v-5b": WAN22_TI2V_5B,
    "wan2.2-t2v-a14b": WAN22_T2V_A14B,
    "wan2.2-i2v-a14b": WAN22_I2V_A14B,
}
