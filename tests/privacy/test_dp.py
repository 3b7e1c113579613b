"""Sample-level DP-SGD and patient-level P3SGD as site trainers: accounting, composition over visits, bad input."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from privmed.config import RunConfig
from privmed.engine.session import plan_of
from privmed.errors import PrivmedError
from privmed.models import build_model
from privmed.privacy.p3sgd import per_patient_clip
from privmed.privacy.registry import make_mechanism
from privmed.protocols.base import TrainSettings
from privmed.run import execute

TRAIN = TrainSettings(rounds=2, batch_size=4)


def opacus_epsilon(sigma, q, steps, delta):
    ref = RDPAccountant()
    ref.history = [(sigma, q, steps)]
    return ref.get_epsilon(delta=delta)


def test_cwt_dp_composes_over_every_visit(toy_fed):
    # Beaulieu-Jones 2018: CWT with DP-SGD at each site, ε over all visits of that site
    cfg = RunConfig(
        protocol="cwt", train=TRAIN, privacy={"mechanism": "dp-sgd", "noise_multiplier": 1.2, "delta": 1e-3}
    )
    priv = execute(cfg, fed=toy_fed).privacy
    n = len(toy_fed.sites[0].train)
    spe = math.ceil(n / 4)  # Poisson steps per epoch, q = 1/spe
    assert priv["unit"] == "sample"
    assert priv["per_site_epsilon"]["site-0"] == pytest.approx(
        opacus_epsilon(1.2, 1 / spe, TRAIN.rounds * spe, 1e-3), abs=1e-6
    )
    # one visit alone spends strictly less than the two visits composed
    assert opacus_epsilon(1.2, 1 / spe, spe, 1e-3) < priv["epsilon"]


def test_epsilon_target_is_met_not_exceeded(toy_fed):
    cfg = RunConfig(protocol="fedavg", train=TRAIN, privacy={"mechanism": "dp-sgd", "epsilon": 2.0, "delta": 1e-3})
    priv = execute(cfg, fed=toy_fed).privacy
    assert all(1.6 < e <= 2.0 for e in priv["per_site_epsilon"].values())


def test_dp_training_repeats_only_with_reproducible_noise_and_moves_the_weights(toy_fed):
    cfg = RunConfig(
        protocol="centralised",
        train=TrainSettings(rounds=1, batch_size=4),
        privacy={"mechanism": "dp-sgd", "noise_multiplier": 1.0, "delta": 1e-3},
        reproducible_noise=True,
    )
    a, b = execute(cfg, fed=toy_fed), execute(cfg, fed=toy_fed)
    wa, wb = a.predictor.to_torch_state_dict(), b.predictor.to_torch_state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    init = build_model("cnn", in_channels=1, n_classes=2, seed=0).state_dict()
    assert any(not torch.equal(wa[k], init[k]) for k in wa)
    assert a.privacy["guarantee"] == "none: noise derived from the run seed"


def test_p3sgd_accounts_at_patient_level(toy_fed):
    cfg = RunConfig(
        protocol="centralised", train=TRAIN, privacy={"mechanism": "p3sgd", "noise_multiplier": 1.0, "delta": 1e-3}
    )
    priv = execute(cfg, fed=toy_fed).privacy
    pooled = toy_fed.pooled("train")
    per_batch = max(1, round(4 * pooled.n_patients / len(pooled)))
    spe = math.ceil(pooled.n_patients / per_batch)
    assert priv["unit"] == "patient"
    assert priv["epsilon"] == pytest.approx(opacus_epsilon(1.0, 1 / spe, TRAIN.rounds * spe, 1e-3), abs=1e-6)


def test_per_patient_clip_matches_reference():
    rng = np.random.default_rng(0)
    g = [
        torch.tensor(rng.normal(size=(5, 3)), dtype=torch.float32),
        torch.tensor(rng.normal(size=(5, 2, 2)), dtype=torch.float32),
    ]
    patient = torch.tensor([0, 1, 0, 2, 1])
    out = per_patient_clip(g, patient, 3, max_norm=0.5)
    ref = [np.zeros((3,)), np.zeros((2, 2))]
    for p in range(3):
        mean = [t.numpy()[patient.numpy() == p].mean(0) for t in g]
        norm = math.sqrt(sum((m**2).sum() for m in mean))
        for r, m in zip(ref, mean):
            r += m * min(1.0, 0.5 / (norm + 1e-6))
    assert all(np.allclose(o.numpy(), r, atol=1e-5) for o, r in zip(out, ref))
    # each patient contributes at most max_norm: the sum is bounded by patients x C
    assert math.sqrt(sum(float((o**2).sum()) for o in out)) <= 3 * 0.5 + 1e-5


def test_patient_gradients_match_autograd_per_patient():
    from opacus import GradSampleModule

    from privmed.privacy.p3sgd import patient_gradients

    torch.manual_seed(0)
    net = build_model("cnn", in_channels=1, n_classes=2, seed=0)
    x, y = torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 1, 0, 1])
    patients = torch.tensor([0, 0, 1, 2, 2])
    crit = torch.nn.CrossEntropyLoss(reduction="sum")
    got, _ = patient_gradients(GradSampleModule(net, loss_reduction="sum"), crit, x, y, patients, 3, max_norm=1e9)
    ref = [torch.zeros_like(p) for p in net.parameters()]
    for p in range(3):
        net.zero_grad()
        m = patients == p
        torch.nn.functional.cross_entropy(net(x[m]), y[m], reduction="mean").backward()
        ref = [r + q.grad for r, q in zip(ref, net.parameters())]
    assert all(torch.allclose(g, r, atol=1e-5) for g, r in zip(got, ref))


@pytest.mark.parametrize(
    "opts,match",
    [
        ({"epsilon": 0}, "epsilon must be > 0"),
        ({}, "needs a target"),
        ({"epsilon": 1.0, "delta": 0.5}, "1/n"),
        ({"epsilon": 0.5, "noise_multiplier": 0.3, "delta": 1e-3}, "gives epsilon"),
        ({"noise_multiplier": 1.0, "accountant": "moments"}, "valid accountants"),
        ({"noise_multiplier": 1.0, "clip": 2}, "valid options"),
        ({"noise_multiplier": 1.0, "budget": -3.0}, "budget must be > 0"),
    ],
)
def test_impossible_settings_refused_before_training(toy_fed, opts, match):
    with pytest.raises(PrivmedError, match=match):
        cfg = RunConfig(protocol="fedavg", train=TRAIN, privacy={"mechanism": "dp-sgd", **opts})
        make_mechanism(cfg.privacy).check(plan_of(cfg, toy_fed))


def test_model_opacus_cannot_fix_without_changing_weights_is_refused(toy_fed):
    cfg = RunConfig(
        protocol="fedavg",
        model="densenet121",
        train=TRAIN,
        privacy={"mechanism": "dp-sgd", "noise_multiplier": 1.0, "delta": 1e-3},
    )
    with pytest.raises(PrivmedError, match="BatchNorm"):
        make_mechanism(cfg.privacy).check(plan_of(cfg, toy_fed))


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("mechanism", ["dp-sgd", "dp-fedavg"])
def test_resumed_dp_run_reports_the_same_epsilon(toy_fed, tmp_path, mechanism, monkeypatch):
    import privmed.engine.session as sessionmod
    import privmed.run as runmod

    cfg = RunConfig(
        protocol="fedavg",
        train=TrainSettings(rounds=3, batch_size=4),
        name="r",
        privacy={"mechanism": mechanism, "noise_multiplier": 1.5, "delta": 1e-3},
    )
    full = execute(cfg, fed=toy_fed)

    def stop_after_2(rnd, total, metrics):
        if rnd == 2:
            raise Interrupt

    monkeypatch.setattr(sessionmod, "build_federation", lambda c, s: toy_fed)
    with pytest.raises(Interrupt):
        runmod.run(cfg, runs_dir=tmp_path, progress=stop_after_2)
    resumed, _ = runmod.run(cfg, runs_dir=tmp_path, resume=True)
    assert resumed.privacy["epsilon"] == pytest.approx(full.privacy["epsilon"], abs=1e-9)


def test_a_resumed_run_under_a_budget_counts_its_own_spend_once(toy_fed, tmp_path, monkeypatch):
    """The interrupted rounds are in the ledger and in the plan: a budget the whole run fits is not refused on
    resume."""
    import privmed.engine.session as sessionmod
    import privmed.run as runmod
    from privmed.privacy.pseudonym import new_key

    key = new_key(tmp_path / "k.key")
    ledger = {"ledger": f"sqlite:///{tmp_path / 'l.db'}", "ledger_key": str(key)}
    base = {"mechanism": "p3sgd", "noise_multiplier": 1.5, "delta": 1e-3, **ledger}
    cfg = RunConfig(protocol="fedavg", train=TrainSettings(rounds=3, batch_size=4), name="b", privacy=base)
    plan = execute(
        dataclasses.replace(cfg, privacy={**base, "ledger": f"sqlite:///{tmp_path / 'plan.db'}"}), fed=toy_fed
    )
    budget = plan.privacy["patient_epsilon_max"] * 1.05  # the whole run fits; twice its first two rounds would not

    def stop_after_2(rnd, total, metrics):
        if rnd == 2:
            raise Interrupt

    monkeypatch.setattr(sessionmod, "build_federation", lambda c, s: toy_fed)
    budgeted = dataclasses.replace(cfg, privacy={**base, "budget": budget})
    with pytest.raises(Interrupt):
        runmod.run(budgeted, runs_dir=tmp_path, progress=stop_after_2)
    resumed, _ = runmod.run(budgeted, runs_dir=tmp_path, resume=True)
    assert resumed.privacy["patient_epsilon_max"] == pytest.approx(plan.privacy["patient_epsilon_max"], rel=1e-9)
    with pytest.raises(PrivmedError, match="refused before training"):  # a new run on top of it is over budget
        execute(dataclasses.replace(budgeted, name="again"), fed=toy_fed)


def test_poisson_batches_match_the_accounted_rate_and_empty_batches_train():
    """93 images, batch 1: q = 1/93 and 93 steps an epoch (Opacus alone would run int(1/q) = 92 and account 1/92);
    at batch 1 about a third of the Poisson batches are empty, and each must still be a DP step."""
    from privmed.privacy.accounting import history_epsilon
    from tests.privacy.conftest import make_fed

    fed = make_fed(n_sites=1, patients=93, images=1)
    cfg = RunConfig(
        protocol="centralised",
        train=TrainSettings(rounds=1, batch_size=1),
        privacy={"mechanism": "dp-sgd", "noise_multiplier": 1.0, "delta": 1e-3},
    )
    r = execute(cfg, fed=fed)
    assert r.privacy["epsilon"] == pytest.approx(history_epsilon([(1.0, 1 / 93, 93)], delta=1e-3), rel=1e-9)


@pytest.mark.parametrize("mechanism", ["dp-sgd", "p3sgd"])
def test_the_inversion_probe_takes_one_noisy_step_on_the_whole_victim_batch(toy_fed, mechanism):
    # the site's own q (1/3 here) on a 2-image victim set would take 3 near-empty steps normalised by q·2
    mech = make_mechanism({"mechanism": mechanism, "noise_multiplier": 1.0, "delta": 1e-3})
    mech.check(plan_of(RunConfig(protocol="fedavg", train=TRAIN), toy_fed))
    assert mech.sample_rate[0] < 1
    mech.one_step_per_call()
    victim = toy_fed.sites[0].train.subset(np.arange(2))
    model = build_model("cnn", in_channels=1, n_classes=2, seed=0)
    out = mech.trainer(0)(model, victim, task="classification", epochs=1, batch_size=2, lr=1e-2, seed=0)
    assert out["dp-steps"] == 1.0
    assert all(torch.isfinite(p).all() for p in model.parameters())
