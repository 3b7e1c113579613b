"""Book-keeping DP-SGD gives Opacus' clipped, noised gradient, clips every unit to C and adds σC noise."""

import warnings

import numpy as np
import pytest
import torch
from opacus import GradSampleModule, PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from privmed.config import RunConfig
from privmed.errors import PrivmedError
from privmed.models import build_model
from privmed.privacy import bookkeeping
from privmed.privacy.p3sgd import bookkeeping_patient_gradients, patient_gradients
from privmed.privacy.registry import make_mechanism
from privmed.protocols.base import TrainSettings
from privmed.run import execute


def cnn() -> nn.Module:
    return build_model("cnn", in_channels=1, n_classes=2, seed=0)


def tiny_densenet(inplace: bool) -> nn.Module:
    """MONAI's DenseNet (concatenations, 1x1 and 3x3 convolutions), BatchNorm -> GroupNorm as Opacus fixes it."""
    from monai.networks.nets import DenseNet
    from opacus.validators import ModuleValidator

    torch.manual_seed(0)
    net = DenseNet(2, 1, 2, init_features=8, growth_rate=4, block_config=(2, 2), bn_size=2)
    net = ModuleValidator.fix(net)
    for m in net.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = inplace
    return net


def batch(n: int = 6, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, size, size, generator=gen), torch.randint(0, 2, (n,), generator=gen)


def opacus_step(net: nn.Module, x, y, *, sigma: float, clip: float, seed: int) -> list[torch.Tensor]:
    """Opacus' own DP-SGD step (hooks): the gradient its optimizer hands to SGD."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module, opt, _ = PrivacyEngine(accountant="rdp").make_private(
            module=net,
            optimizer=torch.optim.SGD(net.parameters(), lr=0.0),
            data_loader=DataLoader(TensorDataset(x, y), batch_size=len(x)),
            noise_multiplier=sigma,
            max_grad_norm=clip,
            poisson_sampling=False,
            noise_generator=torch.Generator().manual_seed(seed),
        )
        nn.functional.cross_entropy(module(x), y).backward()
        opt.step()
    return [p.grad.clone() for p in net.parameters()]


def bookkeeping_step(net: nn.Module, x, y, *, sigma: float, clip: float, seed: int):
    module, opt = bookkeeping.make_private(
        net,
        torch.optim.SGD(net.parameters(), lr=0.0),
        noise_multiplier=sigma,
        max_grad_norm=clip,
        expected_batch_size=len(x),
        generator=torch.Generator().manual_seed(seed),
    )
    norms = module.clipped_backward(nn.functional.cross_entropy(module(x), y))
    opt.step()
    return [p.grad.clone() for p in net.parameters()], norms, module


@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_cnn_gradient_equals_opacus_clipped_noised_gradient_on_the_same_noise_draw(sigma):
    x, y = batch()
    ref = opacus_step(cnn(), x, y, sigma=sigma, clip=0.05, seed=7)
    got, norms, module = bookkeeping_step(cnn(), x, y, sigma=sigma, clip=0.05, seed=7)
    assert set(module._ghost.values()) == {True, False}  # both ghost-norm and instantiated layers are exercised
    assert (norms > 0.05).all()  # clipping is active on every sample
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_densenet_like_gradient_equals_opacus_and_in_place_relus_are_handled():
    """Opacus' hooks refuse in-place ReLUs after hooked layers; book-keeping trains the unmodified network."""
    x, y = batch(4)
    ref = opacus_step(tiny_densenet(inplace=False), x, y, sigma=1.0, clip=0.1, seed=3)
    got, _, module = bookkeeping_step(tiny_densenet(inplace=True), x, y, sigma=1.0, clip=0.1, seed=3)
    assert True in module._ghost.values()
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_every_sample_is_clipped_to_c():
    """Per-sample norms exceed C; one sample's gradient then has norm C, and a batch's sum at most B·C."""
    x, y = batch(5)
    clip = 1e-3
    one, norms, _ = bookkeeping_step(cnn(), x[:1], y[:1], sigma=0.0, clip=clip, seed=0)
    assert norms.item() > 100 * clip
    assert torch.sqrt(sum(g.pow(2).sum() for g in one)).item() == pytest.approx(clip, rel=1e-3)
    summed, norms, _ = bookkeeping_step(cnn(), x, y, sigma=0.0, clip=clip, seed=0)
    assert (norms > 100 * clip).all()
    total = torch.sqrt(sum(g.pow(2).sum() for g in summed)).item() * len(x)  # the step divides by the batch
    assert total <= len(x) * clip * (1 + 1e-5)


def test_noise_has_standard_deviation_sigma_c_over_the_expected_batch():
    x, y = batch(4)
    quiet, _, _ = bookkeeping_step(cnn(), x, y, sigma=0.0, clip=1.0, seed=0)
    noisy, _, _ = bookkeeping_step(cnn(), x, y, sigma=3.0, clip=1.0, seed=0)
    noise = torch.cat([(n - q).flatten() for n, q in zip(noisy, quiet)])
    assert float(noise.std()) == pytest.approx(3.0 * 1.0 / len(x), rel=0.05)


def test_p3sgd_patient_clipping_equals_opacus_per_sample_gradients_grouped_by_patient():
    x, y = batch(7)
    patients, crit = torch.tensor([0, 0, 1, 2, 2, 2, 3]), nn.CrossEntropyLoss(reduction="sum")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref, _ = patient_gradients(GradSampleModule(cnn(), loss_reduction="sum"), crit, x, y, patients, 4, 0.05)
    module = bookkeeping.BookkeepingGradSampleModule(cnn(), max_grad_norm=0.05, loss_reduction="sum")
    got, _ = bookkeeping_patient_gradients(module, crit, x, y, patients, 4, 0.05)
    assert set(module._ghost.values()) == {True, False}
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-7)


def test_shared_weights_are_refused_with_a_clear_error():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.fc(x))

    module = bookkeeping.BookkeepingGradSampleModule(Twice(), max_grad_norm=1.0)
    with pytest.raises(PrivmedError, match="clipping='opacus'"):
        module(torch.randn(2, 4))


def test_unknown_clipping_mode_names_the_valid_ones():
    with pytest.raises(PrivmedError, match="valid: bookkeeping, opacus"):
        make_mechanism({"mechanism": "dp-sgd", "noise_multiplier": 1.0, "clipping": "ghost"})


@pytest.mark.parametrize("mechanism", ["dp-sgd", "p3sgd"])
def test_both_clipping_modes_train_the_same_weights_and_spend_the_same_epsilon(toy_fed, mechanism):
    """Same reproducible noise and sampling: book-keeping and Opacus' path give the same run."""
    results = []
    for clipping in ("bookkeeping", "opacus"):
        privacy = {"mechanism": mechanism, "noise_multiplier": 1.0, "delta": 1e-3, "clipping": clipping}
        cfg = RunConfig(
            protocol="single", train=TrainSettings(rounds=1, batch_size=4), privacy=privacy, reproducible_noise=True
        )
        results.append(execute(cfg, fed=toy_fed))
    a, b = (np.concatenate([v.numpy().ravel() for v in r.predictor.values()]) for r in results)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert results[0].privacy["epsilon"] == results[1].privacy["epsilon"]
