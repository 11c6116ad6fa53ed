"""Named model configurations (``tiny``, ``default``, ``gpsk300``) as JSON-serialisable dataclasses.

``tiny`` exists for tests (seconds on a CPU); ``default`` is the shipped model, small enough to train in well under
an hour on one GPU; ``gpsk300`` is the ~304M-parameter MMDiT scale of the GPSK-300 blog. All three share the grid
(32^3 x 3) and latent (8^3 x 64) shapes, so a VAE of one config can serve an MMDiT of another where the VAE
configs agree.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from gpsk_materials.errors import CheckpointError, ConfigError, UnknownConfigError

GRID_SIZE = 32
GRID_CHANNELS = 3
LATENT_SIZE = 8
LATENT_CHANNELS = 64


@dataclass(frozen=True)
class VAEConfig:
    """3D convolutional VAE: (3, 32, 32, 32) grid <-> (64, 8, 8, 8) latent.

    Parameters
    ----------
    channels
        Feature channels at 32^3, 16^3 and 8^3 (two stride-2 stages reach 8^3).
    blocks_per_level
        Residual blocks per resolution, encoder and decoder alike.
    groups
        GroupNorm groups.
    kl_weight
        Weight of the KL term (per latent element) against the reconstruction MSE.
    channel_weights
        MSE weight per grid channel (Re F, Im F, metric); the metric channel is weighted up because the lattice is
        recovered from it by least squares and must stay near-lossless.
    residual_weight
        Weight of the decoder's own acceptance measure, the relative residual ||F_rec - F||^2 / ||F||^2 of the
        expanded (linear) structure factor, per structure. The compressed-channel MSE weights every reflection
        alike; the decoder fits atoms to the strong low-order reflections and F(000), which this term protects.
    domain
        ``"real"``: convolve the inverse-FFT density with circular padding; ``"reciprocal"``: convolve the Miller
        grid with zero padding (see :mod:`gpsk_materials.models.vae`).
    subvoxel
        Real domain only: add sub-voxel branches, a space-to-depth view of the input density into the encoder's
        16^3 level and a depth-to-space head from the decoder's 16^3 level onto the output density, so that each
        32^3 voxel of a 2^3 block has its own channel (see :mod:`gpsk_materials.models.vae`). Both start at zero:
        a trained VAE without them gains them unchanged (:func:`gpsk_materials.models.growth.add_subvoxel`).
    """

    channels: tuple[int, int, int] = (32, 64, 96)
    blocks_per_level: int = 1
    groups: int = 8
    latent_channels: int = LATENT_CHANNELS
    grid_channels: int = GRID_CHANNELS
    grid_size: int = GRID_SIZE
    kl_weight: float = 1e-6
    channel_weights: tuple[float, float, float] = (1.0, 1.0, 10.0)
    residual_weight: float = 0.0
    domain: str = "real"
    subvoxel: bool = False

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class MMDiTConfig:
    """Multimodal diffusion transformer over the 8^3 x 64 latent.

    Parameters
    ----------
    hidden
        Token width of both streams.
    heads
        Attention heads (``hidden`` must be divisible by it).
    double_blocks, single_blocks
        Number of double-stream (joint attention, separate weights per stream) and single-stream blocks.
    patch
        Cubic patch edge on the 8^3 latent (1, 2, 4 or 8).
    mlp_ratio
        Hidden width of the feed-forward layers relative to ``hidden``.
    max_elements
        Most distinct elements a composition condition may hold (one token each).
    """

    hidden: int = 256
    heads: int = 4
    double_blocks: int = 2
    single_blocks: int = 4
    patch: int = 2
    mlp_ratio: float = 4.0
    latent_channels: int = LATENT_CHANNELS
    latent_size: int = LATENT_SIZE
    max_elements: int = 8

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def num_tokens(self) -> int:
        return (self.latent_size // self.patch) ** 3


@dataclass(frozen=True)
class ModelConfig:
    """A named pair of VAE and MMDiT configurations."""

    name: str
    vae: VAEConfig = field(default_factory=VAEConfig)
    mmdit: MMDiTConfig = field(default_factory=MMDiTConfig)

    def __post_init__(self) -> None:
        check_config(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        try:
            vae = _dataclass_from_dict(VAEConfig, data["vae"])
            mmdit = _dataclass_from_dict(MMDiTConfig, data["mmdit"])
            return cls(name=str(data["name"]), vae=vae, mmdit=mmdit)
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"not a gpsk model config: {exc!r}") from exc


def _dataclass_from_dict(cls, data: dict[str, Any]):
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise TypeError(f"unknown {cls.__name__} fields {sorted(unknown)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**values)


def _matches(value: Any, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, (bool, np.bool_))
    if isinstance(value, (bool, np.bool_)):
        return False
    if kind == "int":
        return isinstance(value, (int, np.integer))
    if kind == "float":
        return isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value)
    if kind == "str":
        return isinstance(value, str)
    if kind.startswith("tuple[") and kind.endswith("]"):
        parts = [p.strip() for p in kind[6:-1].split(",")]
        return isinstance(value, tuple) and len(value) == len(parts) and all(map(_matches, value, parts))
    return True  # a field type this check does not know


def check_fields(obj: Any) -> None:
    """Check every field of a configuration dataclass against its annotated type.

    Parameters
    ----------
    obj : dataclass instance
        A :class:`VAEConfig`, :class:`MMDiTConfig` or training configuration; ``bool`` is not accepted as a number,
        floats must be finite, ``X | None`` fields may be None.

    Raises
    ------
    ConfigError
        Naming the first field whose value has the wrong type, e.g. ``MMDiTConfig.hidden must be an integer``.
    """
    words = {"int": "an integer", "float": "a finite number", "str": "a string", "bool": "true or false"}
    for f in dataclasses.fields(obj):
        value, kind = getattr(obj, f.name), str(f.type)
        optional = kind.endswith(" | None")
        kind = kind.removesuffix(" | None")
        if (value is None and optional) or _matches(value, kind):
            continue
        want = words.get(kind, kind.replace("tuple[", "a tuple of ").replace("]", ""))
        raise ConfigError(f"{type(obj).__name__}.{f.name} must be {want}{' or None' if optional else ''}, "
                          f"got {value!r} ({type(value).__name__})")


def check_config(config: ModelConfig) -> None:
    """Raise :class:`ConfigError` (a ``ValueError``) if the shapes of a configuration are inconsistent."""
    v, m = config.vae, config.mmdit
    if v.grid_size // 4 != m.latent_size or v.latent_channels != m.latent_channels:
        raise ConfigError(f"VAE latent ({v.latent_channels}, {v.grid_size // 4}^3) does not match the MMDiT input")
    if m.latent_size % m.patch:
        raise ConfigError(f"patch {m.patch} does not divide the latent size {m.latent_size}")
    if m.hidden % m.heads or (m.hidden // m.heads) % 2:
        raise ConfigError(f"hidden {m.hidden} must split into {m.heads} heads of even width")
    if v.subvoxel and v.domain != "real":
        raise ConfigError("VAE subvoxel branches need domain='real'")
    if any(c % v.groups for c in v.channels):
        raise ConfigError(f"VAE channels {v.channels} must be multiples of groups={v.groups}")


#: The named configurations; ``default`` is what ``gpsk train`` builds unless told otherwise.
CONFIGS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        name="tiny",
        vae=VAEConfig(channels=(8, 16, 32), blocks_per_level=1, groups=4),
        mmdit=MMDiTConfig(hidden=64, heads=4, double_blocks=1, single_blocks=1, patch=4),
    ),
    # sized so a resumable training checkpoint (weights, EMA, bf16 Adam moments) of either stage stays under
    # 60 MiB with the VAE beside it: 2.5 M VAE (the blog's size) + 3.9 M MMDiT parameters (docs/model_card.md)
    "default": ModelConfig(
        name="default",
        vae=VAEConfig(residual_weight=1.0),
        mmdit=MMDiTConfig(hidden=160, heads=4, double_blocks=2, single_blocks=4),
    ),
    # the default with two residual blocks per VAE level (encoder and decoder): grown from a trained default VAE
    # by gpsk_materials.models.growth.deepen_vae (``gpsk train --model deep --init-weights <default folder>``)
    "deep": ModelConfig(
        name="deep",
        vae=VAEConfig(residual_weight=1.0, blocks_per_level=2),
        mmdit=MMDiTConfig(hidden=160, heads=4, double_blocks=2, single_blocks=4),
    ),
    # the default VAE under an MMDiT 4.5x the default's (17.8 M parameters, 36 MB in bf16): the flow is what keeps
    # samples from decoding (docs/results/latent_statistics_c6_n40.json); ``gpsk train --model wide
    # --init-weights <default folder>`` adopts that folder's VAE and trains this MMDiT from scratch
    "wide": ModelConfig(
        name="wide",
        vae=VAEConfig(residual_weight=1.0),
        mmdit=MMDiTConfig(hidden=288, heads=8, double_blocks=3, single_blocks=6),
    ),
    # one token per latent voxel (patch 1, 512 tokens of 64 numbers) under the default's width: the default's patch 2
    # packs 2^3 x 64 = 512 numbers into a token of width 160, so its velocity per token spans at most 160 of 512
    # directions, and its one-step denoising stays at 0.63-0.71 of the trivial error at every t
    # (docs/results/latent_statistics_c6_n40_t*.json); ``gpsk train --model fine --init-weights <default folder>
    # --vae-steps 0`` adopts that folder's VAE and trains this MMDiT from scratch
    "fine": ModelConfig(
        name="fine",
        vae=VAEConfig(residual_weight=1.0),
        mmdit=MMDiTConfig(hidden=160, heads=4, double_blocks=2, single_blocks=4, patch=1),
    ),
    # the other way to a full-rank token: patch 2 at width 512 (>= the 512 numbers a token carries), with fewer
    # blocks to stay within the shipping budget (~25 M bf16 parameters beside the VAE)
    "wide512": ModelConfig(
        name="wide512",
        vae=VAEConfig(residual_weight=1.0),
        mmdit=MMDiTConfig(hidden=512, heads=8, double_blocks=1, single_blocks=3, patch=2),
    ),
    # c6's VAE compressed to the top 16 principal directions of its 64 latent channels (a quarter of the numbers the
    # flow must generate), with the default MMDiT over them (a patch-2 token is then 2^3 x 16 = 128 numbers at width
    # 160): projected onto those 16 directions, c6's latents of 40 MP-20 test crystals still decode 29 and match 25
    # (all 64: 29 / 28), while the flow cannot reproduce even its training crystals from all 64 (one-sample CSP 5 %
    # on 100 mp20/train.csv targets; docs/results/latent_channels_c6_n40.json, csp_c6_train_split_n100_cpu.json).
    # ``gpsk train --model compact16 --init-weights <default folder>`` starts the VAE there
    # (:func:`~gpsk_materials.models.growth.compress_vae`), trains it, then the flow from scratch
    "compact16": ModelConfig(
        name="compact16",
        vae=VAEConfig(residual_weight=1.0, latent_channels=16),
        mmdit=MMDiTConfig(hidden=160, heads=4, double_blocks=2, single_blocks=4, latent_channels=16),
    ),
    # the default with sub-voxel branches in the VAE (space-to-depth into the encoder, depth-to-space out of the
    # decoder): c7's VAE reproduces F to 1-3 % below max |h_i| = 12 but to 13-30 % at the Miller grid's edge
    # (max |h_i| >= 14), which is 61 % of its error; in the real domain those are the near-Nyquist patterns a
    # nearest-neighbour upsampling and 3^3 convolutions hardly make (Shi et al., "Real-time single image and video
    # super-resolution using an efficient sub-pixel convolutional neural network", CVPR 2016).
    # ``gpsk train --model subvoxel --init-weights <default folder>`` starts from that VAE
    # (:func:`~gpsk_materials.models.growth.add_subvoxel`) and adopts its MMDiT
    "subvoxel": ModelConfig(
        name="subvoxel",
        vae=VAEConfig(residual_weight=1.0, subvoxel=True),
        mmdit=MMDiTConfig(hidden=160, heads=4, double_blocks=2, single_blocks=4),
    ),
    "gpsk300": ModelConfig(
        name="gpsk300",
        mmdit=MMDiTConfig(hidden=1024, heads=16, double_blocks=4, single_blocks=9, patch=1),
    ),
}


def get_config(name: str) -> ModelConfig:
    """Return the named configuration.

    Raises
    ------
    UnknownConfigError
        No configuration has this name (a :class:`ConfigError` and a ``KeyError``); the message lists the names.
    """
    try:
        return CONFIGS[name]
    except (KeyError, TypeError):
        raise UnknownConfigError(f"unknown model config {name!r}; named configs are {sorted(CONFIGS)}") from None
