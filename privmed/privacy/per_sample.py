"""Per-sample gradient norms and clipped sums from a layer's input activations and output gradients.

The layer-level mathematics of book-keeping DP-SGD (:mod:`privmed.privacy.bookkeeping`,
which cites the papers): Bu et al. 2022's ghost norm for convolutions and
linear layers, their layer-wise choice between ghost norm and instantiated
per-sample gradients, per-sample convolution and GroupNorm gradients at about
the cost of the batch's weight gradient on a CPU (three exact convolution
kernels, the fastest measured per layer), Opacus' flat clipping factors, and
the grouping of samples into clipping units (P3SGD's patients). Written here
because Opacus (1.6) has no conv ghost norm and its per-sample conv sampler
(unfold + einsum) costs 2-4x the batch's weight gradient on one CPU thread.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from opacus.utils.tensor_utils import unfold2d, unfold3d
from torch import nn

GHOSTCONVS = (nn.Conv2d, nn.Conv3d)
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def ghost_norm_sq(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """||g_i a_i^T||_F^2 per row i, from Gram matrices: a [N, p, T], g [N, d, T] -> [N] (Bu et al. 2022)."""
    if a.shape[2] == 1:
        return a.pow(2).sum((1, 2)) * g.pow(2).sum((1, 2))
    aa = torch.bmm(a.transpose(1, 2), a)
    gg = torch.bmm(g.transpose(1, 2), g)
    return (aa * gg).sum((1, 2))


def clip_factors(norms: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Opacus' flat-clipping factors ``min(1, C / (||G|| + 1e-6))``, bit for bit its formula."""
    return (max_norm / (norms + 1e-6)).clamp(max=1.0)


def group_positions(x: torch.Tensor, unit_of: torch.Tensor, n_units: int) -> torch.Tensor:
    """[B, c, T] -> [U, c, k*T]: each unit's samples side by side along the positions, zero-padded to k samples."""
    counts = torch.bincount(unit_of, minlength=n_units)
    k = int(counts.max())
    order = torch.argsort(unit_of, stable=True)
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(unit_of)) - start[unit_of[order]]
    out = x.new_zeros((n_units, k, *x.shape[1:]))
    out[unit_of[order], rank] = x[order]
    return out.transpose(1, 2).reshape(n_units, x.shape[1], k * x.shape[2])


def unfold_patches(layer: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """Input patches of a convolution, [B, p, T]."""
    if all(k == 1 for k in layer.kernel_size) and all(st == 1 for st in layer.stride) and not any(layer.padding):
        return a.flatten(2)  # a 1x1 convolution's patches are its input
    if isinstance(layer, nn.Conv2d) and a[0, 0].numel() <= 64:  # im2col beats Opacus' strided unfold on small maps
        return nn.functional.unfold(a, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
    unfold = unfold2d if isinstance(layer, nn.Conv2d) else unfold3d
    return unfold(a, kernel_size=layer.kernel_size, padding=layer.padding, stride=layer.stride, dilation=layer.dilation)


def positions(layer: nn.Module, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a as [B, p, T], g as [B, d, T]) for a ghost-norm layer."""
    if isinstance(layer, nn.Linear):
        a3, g3 = a.reshape(len(a), -1, a.shape[-1]), g.reshape(len(g), -1, g.shape[-1])
        return a3.transpose(1, 2), g3.transpose(1, 2)
    return unfold_patches(layer, a), g.flatten(2)


def use_ghost(layer: nn.Module, g: torch.Tensor) -> bool:
    """Bu et al. 2022's layer-wise rule: ghost norm where it needs less memory (2T^2 < pd) and less time (T(p+d) < pd).

    Their mixed ghost clipping decides on the space complexities alone
    (2BT^2 for the Gram matrices vs Bpd for the per-sample gradients); the
    time condition (BT^2(p+d) for the Grams vs BTpd to instantiate) keeps a
    layer where the two memories are close from paying the Grams' extra time
    (the default CNN's last convolution at 32x32: T = 64, p*d = 9216).
    """
    if isinstance(layer, nn.Linear):
        return True
    if not isinstance(layer, GHOSTCONVS) or layer.groups != 1 or isinstance(layer.padding, str):
        return False
    t, p, d = g[0, 0].numel(), layer.weight[0].numel(), layer.out_channels
    return 2 * t * t < p * d and t * (p + d) < p * d


def _weight_by_unfold(layer: nn.Module, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradients as one batched product of the output gradient and the input patches."""
    n, d = len(a), layer.out_channels
    return torch.bmm(g.reshape(n, d, -1), unfold_patches(layer, a).transpose(1, 2))


def _weight_by_groups(layer: nn.Module, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """PyTorch's own weight gradient with the batch folded into the groups: one grouped ``convolution_backward``."""
    n = len(a)
    stride, padding, dilation, transposed, output_padding, groups = conv_args(layer)
    # only the weight's shape matters for the weight gradient: an unfilled stand-in, not B copies
    shape = (n * layer.weight.shape[0], *layer.weight.shape[1:])
    return torch.ops.aten.convolution_backward(
        g.reshape(1, -1, *g.shape[2:]),
        a.reshape(1, -1, *a.shape[2:]),
        torch.empty(shape, dtype=a.dtype),
        None,
        stride,
        padding,
        dilation,
        transposed,
        output_padding,
        groups * n,
        [False, True, False],
    )[1]


def _weight_by_sample(layer: nn.Module, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """PyTorch's own weight gradient, one sample at a time."""
    args = (None, *conv_args(layer), [False, True, False])
    out = a.new_empty((len(a), *layer.weight.shape))
    for i in range(len(a)):
        out[i] = torch.ops.aten.convolution_backward(g[i : i + 1], a[i : i + 1], layer.weight, *args)[1]
    return out


CONV_METHODS = {"unfold": _weight_by_unfold, "groups": _weight_by_groups, "per-sample": _weight_by_sample}


def conv_methods(layer: nn.Module) -> list[str]:
    """The ways :func:`conv_grad_sample` can instantiate ``layer``'s per-sample weight gradients."""
    unfold = layer.groups == 1 and isinstance(layer, GHOSTCONVS) and not isinstance(layer.padding, str)
    return [*(["unfold"] if unfold else []), "groups", "per-sample"]


def fastest_conv_method(layer: nn.Module, a: torch.Tensor, g: torch.Tensor) -> str:
    """The method that takes the least CPU time on this batch (like cuDNN's benchmark mode; all are exact)."""
    times = {name: float("inf") for name in conv_methods(layer)}
    for _ in range(3):  # the best of three, against a shared machine's noise
        for name in times:
            start = time.process_time()
            CONV_METHODS[name](layer, a, g)
            times[name] = min(times[name], time.process_time() - start)
    return min(times, key=times.get)


def conv_grad_sample(
    layer: nn.Module, activations: list[torch.Tensor], g: torch.Tensor, method: str = "groups"
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients of a convolution by one of :data:`CONV_METHODS`.

    Opacus' own sampler (unfold + einsum) costs 2-4x the batch's weight
    gradient on one CPU thread, ``torch.func.vmap`` of the weight gradient 2x;
    which of these three is cheapest depends on the layer's shape (a
    first layer on one channel: unfold; many input channels on a small map:
    one sample at a time), so the module measures them at its first step.
    """
    a = activations[0]
    out = {}
    if layer.weight.requires_grad:
        out[layer.weight] = CONV_METHODS[method](layer, a, g).view(len(a), *layer.weight.shape)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = g.flatten(2).sum(2)
    return out


def group_norm_grad_sample(
    layer: nn.GroupNorm, a: torch.Tensor, g: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample GroupNorm gradients from the forward's own group statistics (no second normalisation pass).

    d weight_c = rstd_g (sum_s a_cs g_cs - mean_g sum_s g_cs), d bias_c = sum_s g_cs;
    Opacus' sampler re-normalises the input and multiplies, three passes and
    two input-sized temporaries.
    """
    n, c, groups = len(a), layer.num_channels, layer.num_groups
    a4, g4 = a.reshape(n, groups, c // groups, -1), g.reshape(n, groups, c // groups, -1)
    gsum = g4.sum(3)
    out: dict[nn.Parameter, torch.Tensor] = {}
    if layer.weight is not None and layer.weight.requires_grad:
        stats = (mean.view(n, groups, 1), rstd.view(n, groups, 1))
        out[layer.weight] = ((torch.linalg.vecdot(a4, g4) - stats[0] * gsum) * stats[1]).view(n, c)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = gsum.view(n, c)
    return out


def conv_args(layer: nn.Module) -> tuple[Any, ...]:
    """stride, padding, dilation, transposed, output_padding, groups: ``convolution_backward``'s arguments."""
    return (
        list(layer.stride),
        list(layer.padding),
        list(layer.dilation),
        False,
        [0] * len(layer.stride),
        layer.groups,
    )


def weighted_grads(layer: nn.Module, a: torch.Tensor, g: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """The batch's summed weight (and bias) gradient of a ghost layer for output gradients ``g``: one batched pass."""
    has_bias = layer.bias is not None and layer.bias.requires_grad
    if isinstance(layer, nn.Linear):
        a2, g2 = a.reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1])
        out = {layer.weight: g2.t() @ a2}
        if has_bias:
            out[layer.bias] = g2.sum(0)
        return out
    _, gw, gb = torch.ops.aten.convolution_backward(
        g, a, layer.weight, [layer.out_channels] if has_bias else None, *conv_args(layer), [False, True, has_bias]
    )
    out = {layer.weight: gw}
    if has_bias:
        out[layer.bias] = gb
    return out
