"""Networks by name.

``cnn`` is privmed's own small classifier, fast on a CPU and DP-ready
(GroupNorm, no BatchNorm, so Opacus can compute per-sample gradients).
``densenet121`` and ``unet`` come from MONAI, the field's library (the role
NiftyNet had in the review); ``seg-cnn`` is a tiny encoder-decoder for fast
segmentation tests.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from privmed.errors import unknown_name


class SmallCNN(nn.Module):
    """Three conv blocks (conv-GroupNorm-ReLU-pool) and a linear head."""

    def __init__(self, in_channels: int, n_classes: int, width: int = 16) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.ReLU(), nn.MaxPool2d(2))

        self.features = nn.Sequential(block(in_channels, width), block(width, 2 * width), block(2 * width, 2 * width))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SegCNN(nn.Module):
    """A two-level encoder-decoder with a skip connection (tiny U-Net-like)."""

    def __init__(self, in_channels: int, n_classes: int, width: int = 16) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.GroupNorm(4, width), nn.ReLU())
        self.down = nn.Sequential(
            nn.MaxPool2d(2), nn.Conv2d(width, 2 * width, 3, padding=1), nn.GroupNorm(4, 2 * width), nn.ReLU()
        )
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec = nn.Sequential(
            nn.Conv2d(2 * width, width, 3, padding=1), nn.GroupNorm(4, width), nn.ReLU(), nn.Conv2d(width, n_classes, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.enc(x)
        return self.dec(torch.cat([e, self.up(self.down(e))], dim=1))


def _densenet121(in_channels: int, n_classes: int) -> nn.Module:
    from monai.networks.nets import DenseNet121

    return DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=n_classes)


def _unet(in_channels: int, n_classes: int) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=n_classes,
        channels=(16, 32, 64),
        strides=(2, 2),
        num_res_units=1,
        norm="instance",
    )


# name -> (builder, task kind it produces output for)
MODELS: dict[str, tuple[Callable[[int, int], nn.Module], str]] = {
    "cnn": (SmallCNN, "classification"),
    "densenet121": (_densenet121, "classification"),
    "unet": (_unet, "segmentation"),
    "seg-cnn": (SegCNN, "segmentation"),
}


def build_model(name: str, *, in_channels: int, n_classes: int, seed: int) -> nn.Module:
    """Build the network ``name`` with weights initialised from ``seed``."""
    if name not in MODELS:
        raise unknown_name("model", name, list(MODELS))
    builder, _ = MODELS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(in_channels, n_classes)


def model_task(name: str) -> str:
    if name not in MODELS:
        raise unknown_name("model", name, list(MODELS))
    return MODELS[name][1]


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
