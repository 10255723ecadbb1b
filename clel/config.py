"""One dataclass holds every constant of a CLEL run; presets name the paper's settings.

Defaults follow ``SPEC.md``: where the paper and the reference implementation
differ, the default is the reference's (it produced the published numbers).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# CelebA aligned faces, 64x64 centre crops (measured on the 10k shared faces).
CELEBA_MEAN = (0.5087, 0.4230, 0.3778)
CELEBA_STD = (0.3032, 0.2819, 0.2807)

# EBM architectures: (stem channels, [(channels, blocks) per stage], number of scales).
ARCHS: dict[str, dict[str, Any]] = {
    "small": {"stem": 64, "stages": ((64, 1), (64, 1), (128, 1), (128, 1)), "scales": 1},
    "base": {"stem": 128, "stages": ((128, 2), (128, 2), (256, 2), (256, 2)), "scales": 1},
    # Three ResNets on the image at full, 1/2 and 1/4 resolution (the reference code).
    "large": {"stem": 256, "stages": ((256, 2),) * 4, "scales": 3},
    # Test-sized network for smoke runs; same structure, far fewer channels.
    "tiny": {"stem": 16, "stages": ((16, 1), (32, 1)), "scales": 1},
}

# The encoder h: "resnet18", the paper's ResNet-18 trained jointly by L_LE; "inception", the frozen TF-Inception
# pool features of the FID network with a trainable MLP head (the paper's Table 5 route, clel.inception).
ENCODERS = ("resnet18", "inception")


@dataclass
class CLELConfig:
    # data
    dataset: str = "cifar10"
    image_size: int = 32
    mean: tuple[float, float, float] = CIFAR10_MEAN
    std: tuple[float, float, float] = CIFAR10_STD
    # models
    arch: str = "base"
    feature_dim: int = 128  # size of f(x) and of the latent z
    head_hidden: int = 2048
    projection: str = "mlp"  # g: "mlp" (paper), "linear" or "identity" (ablations)
    encoder: str = "resnet18"  # h: resnet18 (trained jointly, the paper's) or inception (frozen network + MLP head)
    encoder_hidden: int = 2048
    encoder_width: int = 64  # ResNet-18 base width; 64 is the paper's encoder (lower only for smoke runs)
    # energies and losses
    beta: float = 0.01  # weight of the latent cosine term in training
    alpha: float = 1.0  # energy-magnitude regulariser
    temperature: float = 0.2  # NT-Xent
    extra_negatives: bool = True  # append detached g(f(x-)) as NT-Xent negatives
    # SGLD and replay buffer
    sgld_steps: int = 60
    sgld_step_size: float = 100.0
    sgld_noise: float = 0.001
    sgld_grad_clip: float = 100.0  # the reference clamps at step_size
    buffer_size: int = 10_000
    reinit_prob: float = 0.001
    # optimisation
    batch_size: int = 64
    contrastive_batch_size: int | None = None  # None: same as batch_size (Large: 256)
    iters: int = 100_000
    lr: float = 1e-4
    adam_betas: tuple[float, float] = (0.0, 0.999)
    warmup_iters: int = 2_000
    encoder_lr: float = 3e-2
    encoder_momentum: float = 0.9
    encoder_weight_decay: float = 5e-4
    ema_half_life_images: float = 20_000.0
    ema_start_iter: int = 312  # before this the EMA copies the weights
    # evaluation defaults
    ood_beta: float = 0.1
    num_classes: int = 10
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; choose one of {sorted(ARCHS)}")
        if self.projection not in ("mlp", "linear", "identity"):
            raise ValueError(f"unknown projection {self.projection!r}; use mlp, linear or identity")
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r}; use {' or '.join(ENCODERS)}")
        self.mean = tuple(self.mean)
        self.std = tuple(self.std)
        self.adam_betas = tuple(self.adam_betas)

    @property
    def ema_decay(self) -> float:
        """Per-iteration EMA decay for a half-life measured in images."""
        return 0.5 ** (self.batch_size / self.ema_half_life_images)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CLELConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; is this a clel config.json?")
        return cls(**d)

    def replace(self, **changes: Any) -> "CLELConfig":
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, CLELConfig] = {
    "cifar10-small": CLELConfig(arch="small"),
    "cifar10-base": CLELConfig(arch="base"),
    "cifar10-large": CLELConfig(arch="large", contrastive_batch_size=256),
    "celeba64-base": CLELConfig(
        dataset="celeba", image_size=64, arch="base", mean=CELEBA_MEAN, std=CELEBA_STD, num_classes=0
    ),
    # Faces on a CPU: the Small network at 32x32 (a quarter of the 64 px model's work per image) with the recipe of
    # the CPU run in ../shared/checkpoints/celeba32-small-cpu: batch 64, 20 SGLD steps, a 1,000-image buffer, a
    # 40k-iteration schedule, and a short warm-up, since every resume from an export warms a fresh Adam up again.
    "celeba32-small": CLELConfig(
        dataset="celeba", image_size=32, arch="small", mean=CELEBA_MEAN, std=CELEBA_STD, num_classes=0,
        batch_size=64, sgld_steps=20, buffer_size=1000, iters=40_000, warmup_iters=50,
    ),
    "imagenet32-base": CLELConfig(dataset="imagenet32", arch="base", num_classes=1000),
    # CPU smoke run: tiny network, short chains, small buffer.
    "tiny": CLELConfig(
        arch="tiny", head_hidden=128, encoder_hidden=256, encoder_width=8, feature_dim=32, batch_size=16,
        sgld_steps=5, buffer_size=256, iters=50, warmup_iters=10, ema_start_iter=5,
    ),
}


def get_preset(name: str) -> CLELConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return dataclasses.replace(PRESETS[name])
