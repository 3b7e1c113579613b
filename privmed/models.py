"""Networks by name.

``cnn`` is privmed's own small classifier, fast on a CPU and DP-ready
(GroupNorm, no BatchNorm, so Opacus can compute per-sample gradients).
``densenet121`` and ``unet`` come from MONAI, the field's library (the role
NiftyNet had in the review); ``seg-cnn`` is a tiny encoder-decoder for fast
segmentation tests; ``he-clstm`` is the conv + polynomial-LSTM sequence
classifier that :mod:`privmed.privacy.he_inference` evaluates under CKKS
(input: a sequence of visits as channels, [T, H, W]); ``privacy-net`` is Privacy-Net's encoder, segmenter and
Siamese discriminator in one module (privmed.obfuscation). Every network is built for 2-D images or 3-D volumes
(``spatial_dims``, from the data: [C, H, W] or [C, D, H, W]); privmed's own
networks stay DP-ready in 3-D (Conv3d and GroupNorm have Opacus per-sample
gradients).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from privmed.errors import unknown_name


def _layers(spatial_dims: int) -> tuple[type, type, type, type]:
    """(Conv, MaxPool, AdaptiveAvgPool, ConvTranspose) for 2-D or 3-D."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if spatial_dims == 2:
        return nn.Conv2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.ConvTranspose2d
    return nn.Conv3d, nn.MaxPool3d, nn.AdaptiveAvgPool3d, nn.ConvTranspose3d


class SmallCNN(nn.Module):
    """Three conv blocks (conv-GroupNorm-ReLU-pool) and a linear head."""

    def __init__(self, in_channels: int, n_classes: int, width: int = 16, spatial_dims: int = 2) -> None:
        super().__init__()
        conv, pool, gap, _ = _layers(spatial_dims)

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(conv(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.ReLU(), pool(2))

        self.features = nn.Sequential(block(in_channels, width), block(width, 2 * width), block(2 * width, 2 * width))
        self.head = nn.Sequential(gap(1), nn.Flatten(), nn.Linear(2 * width, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Poly(nn.Module):
    """``a·x + b·x²``: a polynomial activation (what encrypted arithmetic evaluates; CryptoNets' and MORE's style)."""

    def __init__(self, a: float = 0.5, b: float = 0.25) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * x + self.b * x * x


class PolyCNN(nn.Module):
    """Two conv blocks (conv-polynomial-average pool), average pooling to 4×4 and a linear head.

    Only additions, multiplications and public constants: it trains on MORE
    ciphertexts (:mod:`privmed.protocols.more`, after Vizitiu et al. 2019's
    CNN with polynomial activations; 2-D images only there). No normalisation layers.
    """

    def __init__(self, in_channels: int, n_classes: int, width: int = 8, spatial_dims: int = 2) -> None:
        super().__init__()
        conv, _, gap, _ = _layers(spatial_dims)
        pool = nn.AvgPool2d if spatial_dims == 2 else nn.AvgPool3d
        self.features = nn.Sequential(
            conv(in_channels, width, 3, padding=1),
            Poly(),
            pool(2),
            conv(width, 2 * width, 3, padding=1),
            Poly(),
            pool(2),
        )
        # to 4x4, not 1x1: with global pooling the polynomial network did not learn the phantom (measured)
        self.head = nn.Sequential(gap(4), nn.Flatten(), nn.Linear(2 * width * 4**spatial_dims, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SegCNN(nn.Module):
    """A two-level encoder-decoder with a skip connection (tiny U-Net-like)."""

    def __init__(self, in_channels: int, n_classes: int, width: int = 16, spatial_dims: int = 2) -> None:
        super().__init__()
        conv, pool, _, up = _layers(spatial_dims)
        self.enc = nn.Sequential(conv(in_channels, width, 3, padding=1), nn.GroupNorm(4, width), nn.ReLU())
        self.down = nn.Sequential(pool(2), conv(width, 2 * width, 3, padding=1), nn.GroupNorm(4, 2 * width), nn.ReLU())
        self.up = up(2 * width, width, 2, stride=2)
        self.dec = nn.Sequential(
            conv(2 * width, width, 3, padding=1), nn.GroupNorm(4, width), nn.ReLU(), conv(width, n_classes, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.enc(x)
        return self.dec(torch.cat([e, self.up(self.down(e))], dim=1))


# Degree-3 least-squares fits, evaluable under CKKS in two multiplicative levels:
# sigmoid on [-6, 6] (max error 0.081), tanh on [-2.5, 2.5] (max error 0.121).
SIGMOID3 = (0.5, 0.180555843, -0.00308879159)  # c0 + c1 a + c3 a^3
TANH3 = (0.0, 0.793141888, -0.0715084789)


def poly3(a: torch.Tensor, coeffs: tuple[float, float, float]) -> torch.Tensor:
    """``c0 + c1 a + c3 a³``: the odd polynomial the encrypted path evaluates, on plaintext."""
    c0, c1, c3 = coeffs
    return c0 + c1 * a + c3 * a**3


class HECLSTM(nn.Module):
    """HE-CLSTM (Yue et al. 2019): conv block -> LSTM with polynomial activations -> weighted voting over visits.

    Input [N, T, H, W] (visit t in channel t). Per visit: Conv(1 -> ``channels``,
    ``kernel``, ``stride``, no padding, so the first layer is one im2col
    product), x², adaptive average pooling of the window grid to ``grid``²
    (linear: folds into the next layer's weights), a dense layer to the four
    gates. The LSTM step uses :data:`SIGMOID3` and :data:`TANH3` for the
    sigmoid and tanh; each visit's hidden state gives a score vector
    ``out(h_t)``, and the prediction is their vote weighted by softmax(``vote``)
    (learned, one weight per visit). Every operation is a sum, a product or a
    plaintext affine map, so CKKS evaluates exactly this function.
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        spatial_dims: int = 2,
        channels: int = 4,
        hidden: int = 4,
        kernel: int = 4,
        stride: int = 2,
        grid: int = 4,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError("he-clstm takes 2-D image sequences [T, H, W] (e.g. phantom:v2?sequence=4)")
        self.visits, self.hidden, self.kernel, self.stride = in_channels, hidden, kernel, stride
        self.conv = nn.Conv2d(1, channels, kernel, stride=stride)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.gates_x = nn.Linear(channels * grid * grid, 4 * hidden)
        self.gates_h = nn.Linear(hidden, 4 * hidden, bias=False)
        self.out = nn.Linear(hidden, n_classes)
        self.vote = nn.Parameter(torch.zeros(in_channels))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Gate inputs from the images: [N, T, 4·hidden]."""
        n, t = x.shape[:2]
        f = self.pool(self.conv(x.reshape(n * t, 1, *x.shape[2:])) ** 2).flatten(1)
        return self.gates_x(f).reshape(n, t, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = self.features(x)
        h = c = gx.new_zeros(gx.shape[0], self.hidden)
        weights = torch.softmax(self.vote, 0)
        score = 0
        for t in range(gx.shape[1]):
            i, f, g, o = (gx[:, t] + self.gates_h(h)).chunk(4, dim=1)
            c = poly3(f, SIGMOID3) * c + poly3(i, SIGMOID3) * poly3(g, TANH3)
            h = poly3(o, SIGMOID3) * poly3(c, TANH3)
            score = score + weights[t] * self.out(h)
        return score


def _he_clstm(in_channels: int, n_classes: int, spatial_dims: int = 2) -> nn.Module:
    return HECLSTM(in_channels, n_classes, spatial_dims=spatial_dims)


def _densenet121(in_channels: int, n_classes: int, spatial_dims: int = 2) -> nn.Module:
    from monai.networks.nets import DenseNet121

    return DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=n_classes)


def _unet(in_channels: int, n_classes: int, spatial_dims: int = 2) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=n_classes,
        channels=(16, 32, 64),
        strides=(2, 2),
        num_res_units=1,
        norm="instance",
    )


def _privacy_net(in_channels: int, n_classes: int, spatial_dims: int = 2) -> nn.Module:
    from privmed.obfuscation import PrivacyNet

    return PrivacyNet(in_channels, n_classes, spatial_dims=spatial_dims)


# name -> (builder(in_channels, n_classes, spatial_dims=...), task kind it produces output for)
MODELS: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "cnn": (SmallCNN, "classification"),
    "poly-cnn": (PolyCNN, "classification"),
    "densenet121": (_densenet121, "classification"),
    "unet": (_unet, "segmentation"),
    "seg-cnn": (SegCNN, "segmentation"),
    "privacy-net": (_privacy_net, "segmentation"),
    "he-clstm": (_he_clstm, "classification"),
}


def build_model(name: str, *, in_channels: int, n_classes: int, seed: int, spatial_dims: int = 2) -> nn.Module:
    """Build the network ``name`` for 2-D images or 3-D volumes, with weights initialised from ``seed``."""
    if name not in MODELS:
        raise unknown_name("model", name, list(MODELS))
    builder, _ = MODELS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(in_channels, n_classes, spatial_dims=spatial_dims)


def model_task(name: str) -> str:
    if name not in MODELS:
        raise unknown_name("model", name, list(MODELS))
    return MODELS[name][1]


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
