"""Book-keeping DP-SGD: per-sample clipping at about the cost of one extra weight-gradient pass.

Papers: Bu, Wang, Zha, Karypis 2023, "Differentially private optimization on
large model at small cost" (ICML; book-keeping, BK) and Bu, Mao, Xu 2022,
"Scalable and efficient training of large convolutional neural networks with
differential privacy" (NeurIPS; mixed ghost clipping for convolutions).
One backward pass yields every trainable layer's input activations ``a`` and
output gradients ``g``; from them, per layer, the per-sample gradient norms
and, once the clipping factors are known, the clipped sum
``sum_i min(1, C / ||G_i||) G_i`` -- no second backward pass (what Opacus'
ghost clipping does) and no non-private weight gradient (what Opacus' hooks
compute and throw away).

Per layer (Bu et al. 2022's rule, on the shapes seen at the first step):
with T output positions, p = in_channels x kernel size and d = out_channels,

- *ghost norm* when 2T^2 < p*d (their space rule) and T(p+d) < p*d (their
  time rule): ``||G_i||^2 = <a_i^T a_i, g_i^T g_i>`` from two [T, T] Gram
  matrices, and the clipped sum is one batched weight gradient of the
  clipping-weighted ``g`` (PyTorch's own ``convolution_backward``); Linear
  layers always (T = 1: ``||a_i|| ||g_i||``);
- *instantiation* otherwise: per-sample gradients, their norms, and the
  clipped sum as a weighted sum of them. Convolutions use the cheapest of three
  exact kernels, timed at the first step (unfold + batched matmul, PyTorch's
  weight gradient with the batch folded into the groups, or per sample);
  GroupNorm's come from the forward's own group statistics; any other layer
  uses Opacus' registered sampler (or its functorch fallback).

Faithful: the clipped sum, the norms and the per-layer choice between ghost
norm and instantiation. Differs: the time condition added to the choice (a
layer where both memories are close would otherwise pay the Gram matrices'
extra time) and the measured kernel choice, both for CPU speed; neither
changes the result. Both paths give the gradient of Abadi et al.'s DP-SGD
(up to float rounding): the equality with Opacus' clipped, noised gradient on
the same noise draw is tested. Noise, scaling by the expected batch size and
the accountant's step hook are Opacus' ``DPOptimizerFastGradientClipping``;
Poisson sampling is Opacus' ``DPDataLoader`` on the site's secret generator;
the accountant is unchanged, so ε is that of the Opacus path.

What is taken from Opacus: ``GradSampleModule`` (which layers to hook, model
validation, hook removal, its sampler registry for layers not handled here),
its optimizer, loader and accountants. What Opacus (1.6) lacks, and so is
written here: (1) a ghost-norm rule for convolutions (its ghost clipping
covers Linear/Embedding only and instantiates convolutions); (2) book-keeping:
its fast-gradient-clipping path runs a second backward pass on the
re-weighted loss; (3) a backward that skips the non-private weight gradients
(here ``torch.autograd.grad`` towards the first layers' outputs, so autograd
computes only the output gradients the hooks need); (4) grouped clipping for
P3SGD: a unit of several samples (a patient) is clipped as one, by summing its
samples' per-sample gradients (instantiated layers) or concatenating their
positions (ghost layers, where a unit's gradient is ``sum_i g_i a_i^T``);
(5) per-sample convolution and GroupNorm kernels at about the cost of the
batch's weight gradient on a CPU (Opacus' unfold + einsum costs 2-4x it). The
hooks are privmed's own, lighter than Opacus' (a tensor hook on each layer's
output instead of full backward hooks): they also take networks whose ReLUs
work in place (MONAI's DenseNet), which Opacus' hooks refuse. A layer that runs
twice in one forward pass (shared weights) is refused.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import Any

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizerFastGradientClipping
from opacus.utils.module_utils import trainable_parameters
from torch import nn

from privmed.errors import PrivmedError
from privmed.privacy.per_sample import (
    CONVS,
    clip_factors,
    conv_grad_sample,
    fastest_conv_method,
    ghost_norm_sq,
    group_norm_grad_sample,
    group_positions,
    positions,
    use_ghost,
    weighted_grads,
)

CLIPPING_MODES = ("bookkeeping", "opacus")


class _StepState:
    """What one forward/backward leaves for the clipping: activations, first layers, per-layer records and norms."""

    __slots__ = ("acts", "norm_stats", "roots", "records", "norms_sq", "units", "batch")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.acts: dict[nn.Module, list[Any]] = {}
        self.norm_stats: dict[nn.Module, Any] = {}
        self.roots: list[tuple[torch.Tensor, int, nn.Module]] = []
        self.records: list[tuple[nn.Module, Any, Any]] = []
        self.norms_sq: list[torch.Tensor] = []
        self.units: tuple[torch.Tensor, int, torch.Tensor] | None = None
        self.batch = 0


class BookkeepingGradSampleModule(GradSampleModule):
    """Opacus' ``GradSampleModule`` hooks, turned into book-keeping clipping: call :meth:`clipped_backward`.

    After ``clipped_backward(loss)`` every trainable parameter's ``.grad`` is
    the sum over units of their clipped gradients -- what Opacus'
    ``DPOptimizerFastGradientClipping`` then noises, scales and accounts.
    ``loss_reduction`` as in Opacus ("mean": per-sample gradients are the
    batch-mean loss's gradient times the batch size).
    """

    def __init__(self, m: nn.Module, *, max_grad_norm: float, loss_reduction: str = "mean") -> None:
        super().__init__(m, batch_first=True, loss_reduction=loss_reduction, strict=True)
        self.max_grad_norm = max_grad_norm
        self._ghost: dict[nn.Module, bool] = {}
        self._conv_method: dict[nn.Module, str] = {}
        self._step = _StepState()  # a plain object: nn.Module's own attribute setting is slow per layer

    def add_hooks(
        self, *, loss_reduction: str = "mean", batch_first: bool = True, force_functorch: bool = False
    ) -> None:
        """A forward hook on every layer Opacus would hook; it puts a gradient hook on the layer's output tensor.

        Leaner than Opacus' hooks, whose per-call parameter walks and full
        backward hooks (two extra autograd nodes per layer) cost as much as a
        small network's clipping on one CPU thread; and the gradient is that of
        the layer's own output even if a later ``ReLU(inplace=True)`` modifies
        it (full backward hooks refuse such models).
        """
        from opacus.grad_sample.functorch import prepare_layer

        if hasattr(self._module, "autograd_grad_sample_hooks"):
            raise ValueError("Trying to add hooks twice to the same model")
        self._module.autograd_grad_sample_hooks = []
        self.autograd_grad_sample_hooks = self._module.autograd_grad_sample_hooks
        self._params = {m: [p for _, p in trainable_parameters(m)] for m in self.iterate_submodules(self._module)}
        for module in self._params:
            if type(module) not in self.GRAD_SAMPLERS:
                prepare_layer(module, batch_first=True)  # functorch computes its per-sample gradients
            self.autograd_grad_sample_hooks.append(module.register_forward_hook(self._forward_hook))
        self.enable_hooks()

    def _forward_hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if not (self.hooks_enabled and module.training and torch.is_grad_enabled() and output.requires_grad):
            return
        if module in self._step.acts:
            raise PrivmedError(
                f"a {type(module).__name__} layer runs twice in one forward pass (shared weights); "
                "book-keeping clipping does not support it: use clipping='opacus'"
            )
        self._step.acts[module] = [t.detach() if isinstance(t, torch.Tensor) else t for t in inputs]
        if isinstance(module, nn.GroupNorm):
            self._step.norm_stats[module] = output.grad_fn  # holds the forward's per-group mean and 1/std
        output.register_hook(partial(self._layer_backward, module))
        self._step.batch = len(output)
        if not any(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs):
            self._step.roots.append((output, output._version, module))  # a first layer: the backward stops here

    def _layer_backward(self, module: nn.Module, grad: torch.Tensor) -> None:
        """Per-sample norms of ``module``'s parameters from its input and output gradient; keeps what the sum needs."""
        activations = self._step.acts.pop(module)
        g = grad.detach()  # of the batch loss; the loss-reduction factor is applied to the norms and sums
        if not len(g):
            return
        if self._step.units is not None:
            g = g * self._step.units[2].view(-1, *[1] * (g.dim() - 1))  # P3SGD: a patient's gradient is the mean
        if module not in self._ghost:
            self._ghost[module] = use_ghost(module, g)
        if self._ghost[module]:
            self._ghost_layer(module, activations[0], g)
        else:
            self._instantiated_layer(module, activations, g)

    def _ghost_layer(self, module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> None:
        pa, pg = positions(module, a, g)
        if self._step.units is not None:
            unit_of, n_units, _ = self._step.units
            pa, pg = group_positions(pa, unit_of, n_units), group_positions(pg, unit_of, n_units)
        self._step.norms_sq.append(ghost_norm_sq(pa, pg))
        if module.bias is not None and module.bias.requires_grad:
            self._step.norms_sq.append(pg.sum(2).pow(2).sum(1))
        self._step.records.append((module, a, g))

    def _instantiated_layer(self, module: nn.Module, activations: list[torch.Tensor], g: torch.Tensor) -> None:
        from opacus.grad_sample.functorch import ft_compute_per_sample_gradient

        stats = self._step.norm_stats.get(module)
        if isinstance(module, CONVS) and not isinstance(module.padding, str):
            if module not in self._conv_method:
                self._conv_method[module] = fastest_conv_method(module, activations[0], g)
            grads = conv_grad_sample(module, activations, g, self._conv_method[module])
        elif stats is not None and hasattr(stats, "_saved_result2"):
            grads = group_norm_grad_sample(module, activations[0], g, stats._saved_result1, stats._saved_result2)
        else:
            sampler = self.GRAD_SAMPLERS.get(type(module), ft_compute_per_sample_gradient)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                grads = {p: gs for p, gs in sampler(module, activations, g).items() if p.requires_grad}
        if self._step.units is not None:
            unit_of, n_units, _ = self._step.units
            grads = {p: gs.new_zeros((n_units, *gs.shape[1:])).index_add_(0, unit_of, gs) for p, gs in grads.items()}
        for gs in grads.values():
            self._step.norms_sq.append(torch.linalg.vector_norm(gs.flatten(1), dim=1).square())
        self._step.records.append((module, None, grads))

    def _output_gradients(self, loss: torch.Tensor) -> None:
        """The backward pass, as far as the first layers' outputs: the hooks see every layer's output gradient.

        Autograd then skips every weight gradient (the non-private one, which
        book-keeping replaces) except a first layer's whose output was later
        modified in place (its weight is the target instead).
        """
        targets = [out if out._version == v else m.weight for out, v, m in self._step.roots]
        if targets:
            torch.autograd.grad(loss, targets, allow_unused=True)
        else:  # the input itself requires gradients: a plain backward
            loss.backward()

    def _clipped_sums(self, coef: torch.Tensor) -> None:
        """``p.grad`` = sum over units of ``coef`` x the unit's gradient, for every layer."""
        per_sample = coef if self._step.units is None else coef[self._step.units[0]]
        for module, a, rec in self._step.records:
            if a is None:  # instantiated: weighted sum of the per-unit gradients
                summed = {p: torch.einsum("n,n...->...", coef, gs) for p, gs in rec.items()}
            else:  # ghost: one weight-gradient pass with the clipping folded into the output gradients
                summed = weighted_grads(module, a, rec * per_sample.view(-1, *[1] * (rec.dim() - 1)))
            for p, s in summed.items():
                p.grad = s.view_as(p)

    def clipped_backward(
        self, loss: torch.Tensor, *, unit_of: torch.Tensor | None = None, n_units: int | None = None
    ) -> torch.Tensor:
        """Backward, per-unit norms, clipped sum into ``p.grad``; returns the per-unit gradient norms before clipping.

        ``unit_of`` [B] maps each sample to its unit 0..n_units-1 (P3SGD's
        patients: a unit's gradient is the mean of its samples'); default:
        each sample is its own unit (DP-SGD).
        """
        params = [p for ps in self._params.values() for p in ps]
        if unit_of is not None:
            counts = torch.bincount(unit_of, minlength=n_units).clamp_min(1).float()
            self._step.units = (unit_of, int(n_units), 1.0 / counts[unit_of])
        try:
            self._output_gradients(loss)
            if not self._step.records:  # an empty Poisson batch: the clipped sum is zero, noise is still added
                for p in params:
                    p.grad = torch.zeros_like(p)
                return torch.zeros(0)
            with torch.no_grad():  # the clipped sums are data: no graph through the weights
                # Opacus' per-sample gradients of a mean loss: the batch loss's, times the batch size
                scale = self._step.batch if self.loss_reduction == "mean" else 1.0
                norms = torch.stack(self._step.norms_sq).sum(0).sqrt() * scale
                self._clipped_sums(clip_factors(norms, self.max_grad_norm) * scale)
            return norms
        finally:
            self._step.clear()  # also drops the activations of layers the loss did not reach


def check_clipping(clipping: str) -> None:
    if clipping not in CLIPPING_MODES:
        raise PrivmedError(f"unknown clipping {clipping!r}; valid: {', '.join(CLIPPING_MODES)}")


class BookkeepingDPOptimizer(DPOptimizerFastGradientClipping):
    """Opacus' noising optimizer for pre-clipped gradients, without its per-step deep copy of every gradient.

    ``p.grad`` is already a fresh tensor (the clipped sum), so it becomes
    ``p.summed_grad`` as it is; noise, scaling and the accountant's hook are
    Opacus' own.
    """

    def accumulate(self) -> None:
        for p in self.params:
            p.summed_grad = p.grad if p.summed_grad is None else p.summed_grad + p.grad


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: int,
    generator: torch.Generator,
    loss_reduction: str = "mean",
) -> tuple[BookkeepingGradSampleModule, Any]:
    """(book-keeping module, Opacus' noising optimizer); a step is ``module.clipped_backward(loss)``, ``step()``.

    The optimizer is Opacus' ``DPOptimizerFastGradientClipping``: it adds
    N(0, (σC)^2) noise from ``generator`` to each parameter's clipped sum, in
    parameter order, and divides by ``expected_batch_size`` -- the same draws
    and arithmetic as Opacus' ``DPOptimizer`` after its own clipping. Attach
    the accountant with ``optimizer.attach_step_hook``.
    """
    module = BookkeepingGradSampleModule(model, max_grad_norm=max_grad_norm, loss_reduction=loss_reduction)
    dp_optimizer = BookkeepingDPOptimizer(
        optimizer,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size,
        loss_reduction=loss_reduction,
        generator=generator,
    )
    return module, dp_optimizer
