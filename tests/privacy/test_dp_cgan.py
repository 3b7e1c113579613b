"""DP-CGAN: ε is Opacus' RDP over the steps taken and stops at the target, noise is there, TSTR beats chance,
and ``privmed synth`` writes a file the MedMNIST loader reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from privmed.data.base import ArraySet
from privmed.errors import PrivmedError
from privmed.privacy.accounting import history_epsilon
from privmed.synthetic.dp_cgan import (
    CGANConfig,
    Discriminator,
    Generator,
    generator_step,
    make_private_discriminator,
    steps_for_target,
    train_cgan,
)

torch.set_num_threads(1)


def toy(n: int, seed: int) -> ArraySet:
    """16×16 images whose class is where a bright square sits (top-left: 0, bottom-right: 1), 2 images a patient."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    x = rng.normal(0.2, 0.05, size=(n, 1, 16, 16))
    for i, k in enumerate(labels):
        r, c = (2, 2) if k == 0 else (9, 9)
        x[i, 0, r : r + 5, c : c + 5] = 0.9
    ids = np.asarray([f"P{i // 2}" for i in range(n)])
    return ArraySet(images=np.clip(x, 0, 1).astype(np.float32), labels=labels.astype(np.int64), patient_ids=ids)


def test_epsilon_is_opacus_rdp_over_the_steps_taken_and_stops_at_the_target(tmp_path):
    data = toy(64, 0)  # q = 16/64
    cfg = CGANConfig(epsilon=5.0, batch_size=16, width=8, latent_dim=8, seed=0, reproducible_noise=True)
    gan = train_cgan(data, 2, cfg)
    p = gan.privacy
    taken = sum(n for _, _, n in p["accountant_history"])
    assert taken == gan.steps == p["steps"] > 0  # one accountant step per batch (not two: opacus #418)
    acc = RDPAccountant()
    acc.history = [(cfg.noise_multiplier, 0.25, gan.steps)]
    assert p["accountant"] == "rdp" and p["epsilon"] == pytest.approx(acc.get_epsilon(delta=cfg.delta), rel=1e-9)
    assert p["epsilon"] <= 5.0 < history_epsilon([(cfg.noise_multiplier, 0.25, gan.steps + 1)], delta=cfg.delta)
    assert gan.steps == steps_for_target(epsilon=5.0, delta=cfg.delta, q=0.25, noise_multiplier=cfg.noise_multiplier)
    # a patient with 2 images is charged the group bound, far above the image-level ε
    assert p["patient_epsilon_max"] > 3 * p["epsilon"]
    assert p["guarantee"].startswith("none")  # reproducible noise is not private
    # the ledger is charged per patient (pseudonym) with that group bound: k = 2 images, σ, the steps taken
    from privmed.privacy.accounting import rdp_group_gaussian
    from privmed.privacy.ledger import Ledger
    from privmed.privacy.pseudonym import new_key, pseudonym
    from privmed.synthetic.dp_cgan import charge_ledger

    key, url = new_key(tmp_path / "key"), f"sqlite://{tmp_path / 'ledger.db'}"
    assert charge_ledger(gan, ledger=url, ledger_key=str(key), run="t")["patients_charged"] == 32
    spent = Ledger(url).spent_rdp()
    want = rdp_group_gaussian(group_size=2, noise_multiplier=cfg.noise_multiplier, steps=gan.steps)
    assert np.allclose(spent[pseudonym(key.read_bytes(), "P0")], want) and len(spent) == 32


def test_discriminator_noise_has_the_dp_magnitude():
    """A step on a zero loss releases only the noise: std σC per coordinate of the summed gradient."""
    cfg = CGANConfig(batch_size=16, width=8, noise_multiplier=1.12, max_grad_norm=1.1)
    data = toy(64, 1)
    d = Discriminator((1, 16, 16), 2, 8)
    opt = torch.optim.SGD(d.parameters(), lr=0.0)
    x, y = torch.from_numpy(data.images), torch.from_numpy(data.labels)
    module, opt, loader, _ = make_private_discriminator(d, opt, x, y, cfg, torch.Generator().manual_seed(0))
    xb, yb = next(iter(loader))
    opt.zero_grad(set_to_none=True)
    with pytest.warns(UserWarning, match="Full backward hook"):  # the images need no grad: expected
        (module(xb, yb).sum() * 0).backward()
    opt.step()
    noise = torch.cat([p.grad.flatten() for p in d.parameters()]) * opt.expected_batch_size
    assert noise.std().item() == pytest.approx(1.12 * 1.1, rel=0.1)
    module._close()


def test_generator_step_leaves_no_per_sample_gradients_in_the_discriminator():
    from opacus import GradSampleModule

    d = GradSampleModule(Discriminator((1, 16, 16), 2, 8))
    g = Generator((1, 16, 16), 2, 8, 8)
    gen = torch.Generator().manual_seed(0)
    generator_step(g, d, torch.optim.Adam(g.parameters()), 8, 2, 8, gen)
    assert all(getattr(p, "grad_sample", None) is None and p.grad is None for p in d.parameters())
    assert all(p.grad is not None for p in g.parameters())  # the generator did learn from it
    d._close()


def test_tstr_on_a_non_private_cgan_beats_chance_clearly():
    from privmed.synthetic.evaluate import tstr

    train, test = toy(96, 2), toy(64, 3)
    gan = train_cgan(train, 2, CGANConfig(epsilon=None, steps=150, batch_size=32, width=8, latent_dim=8, lr=2e-3))
    synthetic = gan.sample(128, seed=5)
    out = tstr(synthetic, test, 2, seed=0, epochs=5)
    assert out["cnn"]["auroc"] > 0.9 and out["logreg"]["auroc"] > 0.9


def test_synth_round_trips_through_the_medmnist_loader(tmp_path):
    from typer.testing import CliRunner

    from privmed.cli import app
    from privmed.data.medmnist import load_medmnist

    out = tmp_path / "synth.npz"
    args = ["synth", "--image-size", "16", "--width", "8", "--steps", "3", "--n", "40", "--out", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    loaded = load_medmnist(out)
    assert loaded.image_shape == (1, 16, 16) and len(loaded.data) == 40 and loaded.n_classes == 2
    assert np.bincount(loaded.data.labels).tolist() == [20, 20]
    assert (tmp_path / "synth_class0.png").is_file() and (tmp_path / "synth_class1.png").is_file()
    bad = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "synth.csv")])
    assert bad.exit_code == 2 and ".npz" in bad.output


def test_bad_settings_are_one_clear_error():
    with pytest.raises(PrivmedError, match="steps"):
        CGANConfig(epsilon=None)
    with pytest.raises(PrivmedError, match="single step"):
        train_cgan(toy(16, 0), 2, CGANConfig(epsilon=0.01, batch_size=16, width=8))


def test_frechet_distance_is_zero_on_the_same_features_and_grows_with_a_shift():
    from privmed.synthetic.evaluate import frechet_distance

    a = np.random.default_rng(0).normal(size=(300, 4))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + 2.0) == pytest.approx(16.0, rel=1e-6)  # ‖Δμ‖² = 4 × 2², same covariance


def test_membership_attack_finds_a_memorising_generator_and_not_a_fresh_sample():
    from privmed.synthetic.evaluate import membership

    members, non_members, fresh = toy(40, 4), toy(40, 5), toy(40, 6)
    non_members = ArraySet(non_members.images, non_members.labels, np.char.add("N", non_members.patient_ids))
    copied = membership(members, members, non_members, seed=0)  # a generator that releases its training images
    assert copied["auc"] == 1.0 and copied["null_auc_95pct"] < 0.75
    unrelated = membership(fresh, members, non_members, seed=0)  # released images independent of the members
    assert unrelated["auc"] < copied["null_auc_95pct"]
