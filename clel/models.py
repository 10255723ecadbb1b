"""The three networks of CLEL: the EBM f, the projection g and the encoder h.

E(x) = ½‖f(x)‖² is the marginal energy; g maps f(x) into the encoder's latent
space, where h(x)/‖h(x)‖ lives on the unit sphere. Every network normalises its
own input, so SGLD, the replay buffer and clamping all work in [0, 1] pixels.
The encoder is the paper's ResNet-18 (``encoder="resnet18"``) or a frozen
pretrained network with a trainable head (``encoder="inception"``); both take
images and give h(x), so no caller needs to know which.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from . import inception
from .config import ARCHS, CLELConfig


class Normalize(nn.Module):
    """(x - mean) / std as the first layer, so callers always hand [0, 1] pixels."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class _AvgPoolFn(torch.autograd.Function):
    """k x k average pooling whose backward is one nearest-neighbour upsampling of grad / k².

    That is what ``avg_pool2d``'s backward computes, but that one zero-fills and then scatters: on CPU in bf16
    (the fast path's chains) this is about 2x faster, which counts because SGLD runs the backward at every step.
    In fp32 it is not faster, so only bf16 CPU tensors take it. Bit-identical for k a power of 2 (the division is
    exact).
    """

    @staticmethod
    def forward(ctx, x: Tensor, k: int) -> Tensor:
        ctx.k = k
        return F.avg_pool2d(x, k)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        k = ctx.k
        return F.interpolate(grad / (k * k), scale_factor=k, mode="nearest"), None


def avg_pool(x: Tensor, k: int) -> Tensor:
    """``F.avg_pool2d(x, k)``, with the backward of :class:`_AvgPoolFn` for bf16 on CPU (where k divides the size)."""
    fast = x.dtype == torch.bfloat16 and x.device.type == "cpu" and torch.is_grad_enabled()
    if not fast or x.shape[-1] % k or x.shape[-2] % k:
        return F.avg_pool2d(x, k)
    return _AvgPoolFn.apply(x, k)


class AvgPool(nn.Module):
    """``nn.AvgPool2d(k)`` through :func:`avg_pool`."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x: Tensor) -> Tensor:
        return avg_pool(x, self.k)


def _conv(cin: int, cout: int, k: int, bias: bool = True) -> nn.Module:
    conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)
    # Kaiming-normal with linear gain, then spectral norm (init must precede the parametrisation).
    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="linear")
    if bias:
        nn.init.zeros_(conv.bias)
    return spectral_norm(conv)


def _linear(cin: int, cout: int, bias: bool = True) -> nn.Linear:
    lin = nn.Linear(cin, cout, bias=bias)
    nn.init.normal_(lin.weight, std=0.01)
    if bias:
        nn.init.zeros_(lin.bias)
    return lin


class ResBlock(nn.Module):
    """Pre-activation block without normalisation: conv2(act(conv1(act(x)))) + shortcut(x)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = _conv(cin, cout, 3)
        self.conv2 = _conv(cout, cout, 3)
        self.shortcut = _conv(cin, cout, 1, bias=False) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.leaky_relu(x, 0.2))
        h = self.conv2(F.leaky_relu(h, 0.2))
        return h + self.shortcut(x)


class ResNetTrunk(nn.Module):
    """Stem conv, stages of ResBlocks separated by 2x average pooling, act, global pool."""

    def __init__(self, stem: int, stages: tuple[tuple[int, int], ...]):
        super().__init__()
        layers: list[nn.Module] = [_conv(3, stem, 3)]
        cin = stem
        for i, (channels, blocks) in enumerate(stages):
            if i > 0:
                layers.append(AvgPool(2))
            for _ in range(blocks):
                layers.append(ResBlock(cin, channels))
                cin = channels
        self.layers = nn.Sequential(*layers)
        self.out_channels = cin

    def forward(self, x: Tensor) -> Tensor:
        h = F.leaky_relu(self.layers(x), 0.2)
        return h.mean(dim=(2, 3))


class EBM(nn.Module):
    """f_θ: image in [0, 1] → R^feature_dim. Small/Base use one trunk, Large three scales."""

    def __init__(self, cfg: CLELConfig):
        super().__init__()
        arch = ARCHS[cfg.arch]
        self.normalize = Normalize(cfg.mean, cfg.std)
        self.scales = arch["scales"]
        self.trunks = nn.ModuleList(ResNetTrunk(arch["stem"], arch["stages"]) for _ in range(self.scales))
        width = sum(t.out_channels for t in self.trunks)
        self.head = nn.Sequential(
            _linear(width, cfg.head_hidden), nn.LeakyReLU(0.2), _linear(cfg.head_hidden, cfg.feature_dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.normalize(x)
        # Scale s sees the image average-pooled by 2**s (32, 16 and 8 pixels on CIFAR-10).
        feats = [trunk(avg_pool(x, 2**s) if s else x) for s, trunk in enumerate(self.trunks)]
        return self.head(torch.cat(feats, dim=1))


def build_projection(cfg: CLELConfig) -> nn.Module:
    """g_θ: MLP without biases (positively homogeneous, so cos(g(f), z) = cos(g(f/‖f‖), z))."""
    d, hidden = cfg.feature_dim, cfg.head_hidden
    if cfg.projection == "identity":
        return nn.Identity()
    if cfg.projection == "linear":
        return _linear(d, d, bias=False)
    return nn.Sequential(_linear(d, hidden, bias=False), nn.LeakyReLU(0.2), _linear(hidden, d, bias=False))


def _narrow_resnet18(net: torchvision.models.ResNet, width: int) -> None:
    """Rebuild a ResNet-18's stages at base width ``width`` (the paper's is 64) for CPU smoke runs.

    Same topology, key names and torchvision init (Kaiming fan-out convs, zero-init last BN of each block).
    """
    from torchvision.models.resnet import BasicBlock

    net.inplanes = width
    net.bn1 = nn.BatchNorm2d(width)
    net.layer1 = net._make_layer(BasicBlock, width, 2)
    net.layer2 = net._make_layer(BasicBlock, 2 * width, 2, stride=2)
    net.layer3 = net._make_layer(BasicBlock, 4 * width, 2, stride=2)
    net.layer4 = net._make_layer(BasicBlock, 8 * width, 2, stride=2)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    for m in net.modules():
        if isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)


class Encoder(nn.Module):
    """h_φ: CIFAR-style ResNet-18 (3x3 stem, no max-pool) + MLP head with BatchNorm."""

    def __init__(self, cfg: CLELConfig):
        super().__init__()
        self.normalize = Normalize(cfg.mean, cfg.std)
        net = torchvision.models.resnet18(weights=None, zero_init_residual=True)
        w = cfg.encoder_width
        if w != 64:
            _narrow_resnet18(net, w)
        net.conv1 = nn.Conv2d(3, w, 3, 1, 1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
        net.fc = nn.Identity()
        self.backbone = net
        self.head = nn.Sequential(
            nn.Linear(8 * w, cfg.encoder_hidden),
            nn.BatchNorm1d(cfg.encoder_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(cfg.encoder_hidden, cfg.feature_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(self.normalize(x)))


class FrozenEncoder(nn.Module):
    """h_φ(x) = head(Inception(x)): the frozen TF-Inception pool features of the FID network and a trainable 2-layer
    MLP to the latent size, the paper's Table 5 route (its MAE variant: a frozen pretrained encoder, only the MLP
    trained, by L_LE without augmentation).

    The network is not a submodule: it is never trained, copied (the EMA, deep copies) or saved, and one instance
    per device serves FID and every model (:func:`clel.inception.get_inception`). ``forward`` runs it once, for
    new images (an upload, an interpolation's ends); the images of a data set go through it once ever
    (:func:`clel.inception.cached_features`) and then only through ``head``.
    """

    def __init__(self, cfg: CLELConfig):
        super().__init__()
        self.head = nn.Sequential(
            nn.Linear(inception.INCEPTION_DIM, cfg.encoder_hidden),
            nn.BatchNorm1d(cfg.encoder_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(cfg.encoder_hidden, cfg.feature_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(inception.encoder_features(x).to(self.head[0].weight.dtype))


def build_encoder(cfg: CLELConfig) -> nn.Module:
    """h_φ of ``cfg.encoder``: the ResNet-18 :class:`Encoder` or the :class:`FrozenEncoder`."""
    return FrozenEncoder(cfg) if cfg.encoder == "inception" else Encoder(cfg)


class CLEL(nn.Module):
    """The three networks together, so EMA, checkpoints and exports treat them as one."""

    def __init__(self, cfg: CLELConfig):
        super().__init__()
        self.cfg = cfg
        self.f = EBM(cfg)
        self.g = build_projection(cfg)
        self.h = build_encoder(cfg)
        # uint8 images [N, 3, H, W] of the model's own long-run chains (its training replay buffer), when its
        # weights ship them (clel.weights.load_pretrained): a chain may start from them. A plain attribute, not a
        # registered buffer: no part of the weights, the EMA or the state dict.
        self.replay_buffer: Tensor | None = None


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters; a spectral-normalised weight counts once (its original)."""
    return sum(p.numel() for p in module.parameters())
