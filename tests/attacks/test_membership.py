"""Membership inference detects a memorising model and finds nothing in a model that never saw the candidates."""

import numpy as np
import pytest

from privmed.attacks import membership
from privmed.attacks.metrics import mia_metrics, per_patient
from privmed.data.base import ArraySet
from privmed.errors import PrivmedError
from privmed.site import ModelSpec
from privmed.tasks import predict_proba, train_local

SPEC = ModelSpec("cnn", 1, 2, "classification")


def noise_set(n: int, seed: int) -> ArraySet:
    """Images with random labels: only memorisation can fit them, the sharpest membership signal."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 1, 16, 16)).astype(np.float32)
    return ArraySet(x, rng.integers(0, 2, n).astype(np.int64), np.array([f"s{seed}p{i // 2}" for i in range(n)]))


@pytest.fixture(scope="module")
def world():
    members, outsiders, aux = noise_set(32, 1), noise_set(32, 2), noise_set(64, 3)
    target = SPEC.build(0)
    train_local(target, members, task="classification", epochs=60, batch_size=8, lr=1e-2, seed=0)
    bystander = SPEC.build(0)  # same recipe, other data: the candidates are all outsiders to it
    train_local(bystander, noise_set(32, 4), task="classification", epochs=60, batch_size=8, lr=1e-2, seed=0)
    cand, is_member = membership.candidates(members, outsiders, seed=0)
    return target, bystander, cand, is_member, aux


def test_loss_threshold_detects_memorisation_and_not_a_bystander(world):
    target, bystander, cand, is_member, _ = world
    hit = mia_metrics(membership.loss_threshold_scores(predict_proba(target, cand), cand.labels), is_member)
    null = mia_metrics(membership.loss_threshold_scores(predict_proba(bystander, cand), cand.labels), is_member)
    assert hit["auc"] > 0.85
    assert abs(null["auc"] - 0.5) < 0.2
    patient = mia_metrics(
        *per_patient(
            membership.loss_threshold_scores(predict_proba(target, cand), cand.labels), is_member, cand.patient_ids
        )
    )
    assert patient["auc"] > 0.85


def test_lira_offline_detects_memorisation(world):
    target, bystander, cand, is_member, aux = world
    members: list = []
    shadows = membership.train_shadows(
        SPEC.build,
        aux,
        config=membership.LiraConfig(n_shadows=4, epochs=60, seed=0),
        batch_size=8,
        lr=1e-2,
        members_out=members,
    )
    from privmed.attacks.harness import _lira_control

    control = _lira_control(shadows, members, aux, global_variance=True)  # the audit's positive control
    assert control["lira"]["auc"] > 0.85 and control["candidates"] > 10
    assert mia_metrics(membership.lira(predict_proba(target, cand), cand, shadows), is_member)["auc"] > 0.85
    assert (
        abs(mia_metrics(membership.lira(predict_proba(bystander, cand), cand, shadows), is_member)["auc"] - 0.5) < 0.2
    )


def test_lira_offline_score_is_the_out_z_score():
    out = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    got = membership.lira_offline_scores(np.array([2.0, 9.0]), out)
    assert np.allclose(got, [0.0, (9.0 - 3.0) / 2.0], atol=1e-5)
    out = np.array([[0.0, 0.0], [2.0, 6.0]])  # per-candidate variances 2 and 18: global sd = sqrt(10)
    got = membership.lira_offline_scores(np.array([1.0, 3.0]), out, global_variance=True)
    assert np.allclose(got, [0.0, 0.0], atol=1e-5)
    got = membership.lira_offline_scores(np.array([1.0 + np.sqrt(10), 3.0]), out, global_variance=True)
    assert np.allclose(got, [1.0, 0.0], atol=1e-5)


def test_logit_confidence_and_candidates_are_balanced_by_patient():
    proba = np.array([[0.2, 0.8], [0.5, 0.5]])
    assert np.allclose(membership.logit_confidence(proba, np.array([1, 0])), [np.log(4), 0.0])
    cand, is_member = membership.candidates(noise_set(10, 1), noise_set(30, 2), seed=0)
    assert is_member.sum() == 10 and (~is_member).sum() == 10
    for pid in np.unique(cand.patient_ids):  # a patient's images are taken together
        assert len(set(is_member[cand.patient_ids == pid])) == 1


def test_lira_config_validation():
    with pytest.raises(PrivmedError, match="at least 2 shadow"):
        membership.LiraConfig(n_shadows=1)


def test_dp_sgd_with_small_epsilon_brings_membership_auc_to_chance(world):
    """The same memorising recipe under Opacus DP-SGD (noise multiplier 5, clip 1): no membership signal left."""
    import torch
    from opacus import PrivacyEngine

    _, _, cand, is_member, _ = world
    members = cand.subset(np.flatnonzero(is_member))
    model = SPEC.build(0)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(members.images), torch.from_numpy(members.labels)),
        batch_size=8,
        generator=torch.Generator().manual_seed(0),
    )
    engine = PrivacyEngine(accountant="rdp")
    model, opt, loader = engine.make_private(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        data_loader=loader,
        noise_multiplier=5.0,
        max_grad_norm=1.0,
        noise_generator=torch.Generator().manual_seed(0),
    )
    for _ in range(60):
        for x, y in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    eps = engine.get_epsilon(delta=1e-3)
    auc = mia_metrics(membership.loss_threshold_scores(predict_proba(model._module, cand), cand.labels), is_member)[
        "auc"
    ]
    assert eps < 5 and abs(auc - 0.5) < 0.15
