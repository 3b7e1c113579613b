"""Privacy-Net (issue 15, part 2): the protocol trains and reports Dice; λ reaches the sites; a fresh attacker
re-identifies raw images far better than the encodings."""

import dataclasses

import numpy as np
import pytest
import torch

from privmed.audit import not_applicable
from privmed.config import RunConfig
from privmed.engine.session import assemble
from privmed.errors import PrivmedError
from privmed.obfuscation import LAM_KEY, pair_batches, pair_targets
from privmed.protocols import privacy_net
from privmed.protocols.base import TrainSettings
from privmed.run import execute

PNET = RunConfig(
    protocol="privacy-net", model="privacy-net", task="segmentation", train=TrainSettings(rounds=1, batch_size=8)
)


def test_privacy_net_trains_and_reports_dice(small_fed):
    result = execute(PNET, fed=small_fed)
    dice = result.performance["final"]["dice"]
    assert 0.0 < dice <= 1.0  # the segmenter finds some lesion pixels on the encodings
    assert result.communication["bytes_up"] > 0 and result.protocol == "privacy-net"


def test_lam_reaches_the_sites_and_changes_what_they_train(small_fed):
    trained = {}
    for lam in (0.0, 10.0):
        session = assemble(dataclasses.replace(PNET, options={"lam": lam}), fed=small_fed)
        out = privacy_net.run(session.ctx)
        sent = [r for r in session.grid.traffic.records if r["direction"] == "down" and r["type"] == "train"]
        assert sent  # the sites trained
        trained[lam] = out.predictor.to_torch_state_dict()
    # same seed, same data: only λ differs, so the encoders differ only if the sites received it
    enc = [k for k in trained[0.0] if k.startswith("encoder.") and trained[0.0][k].is_floating_point()]
    assert any(not torch.allclose(trained[0.0][k], trained[10.0][k]) for k in enc)
    assert LAM_KEY == "privacy-net-lam"


def test_privacy_net_refuses_another_model_and_a_negative_lam(small_fed):
    with pytest.raises(PrivmedError, match="use --model privacy-net"):
        execute(dataclasses.replace(PNET, model="seg-cnn"), fed=small_fed)
    with pytest.raises(PrivmedError, match="lam"):
        assemble(dataclasses.replace(PNET, options={"lam": -1.0}), fed=small_fed)


def test_pairs_are_balanced_and_two_images_of_each_patient():
    ids = np.repeat(np.array([f"p{i}" for i in range(6)]), 3)
    batches = pair_batches(ids, batch_size=8, rng=np.random.default_rng(0))
    for idx in batches:
        assert all(ids[idx[2 * i]] == ids[idx[2 * i + 1]] for i in range(len(idx) // 2))
        assert len(set(ids[idx[::2]])) == len(idx) // 2
    left, right, same = pair_targets(4)
    assert same.sum() == 4 and len(same) == 8
    assert all(ids[batches[0][a]] != ids[batches[0][b]] for a, b, s in zip(left, right, same) if s == 0)
    with pytest.raises(PrivmedError, match="at least 2 patients with 2 or more images"):
        pair_batches(np.array(["a", "b", "c"]), batch_size=8, rng=np.random.default_rng(0))


def test_reidentification_applies_only_where_encodings_are_sent():
    assert not_applicable("reidentification", protocol="privacy-net", task="segmentation", privacy={}) is None
    why = not_applicable("reidentification", protocol="fedavg", task="segmentation", privacy={})
    assert "no encoding" in why


def test_fresh_attacker_reidentifies_raw_images_far_better_than_the_encodings():
    """Privacy-Net's default λ and discriminator steps, trained at one site of the 16 px phantom; the audit's
    fresh attacker (not the co-trained discriminator) on the frozen encoder, the raw images as control."""
    from flwr.app import ArrayRecord

    from privmed.attacks.harness import Target, measure_reidentification
    from privmed.config import DataConfig
    from privmed.engine.session import build_federation, model_spec
    from privmed.obfuscation import adversarial_train
    from privmed.protocols.privacy_net import PrivacyNetOptions

    config = dataclasses.replace(PNET, data=DataConfig(image_size=16))
    fed = build_federation(config.data, config.seed)
    spec = model_spec(config, fed)
    model = spec.build(seed=0)
    default = PrivacyNetOptions()
    adversarial_train(model, fed.sites[0].train, lam=default.lam, d_steps=default.d_steps, epochs=20, seed=0)
    reid = measure_reidentification(
        Target(config, fed, spec, ArrayRecord(model.state_dict())), max_patients=400, epochs=5
    )
    raw, enc, null = reid["positive_control_raw"], reid["encoded"], reid["null"]
    assert raw["verification_auc"] > 0.7 and raw["top1"] > 3 * null["top1"]  # the attacker works on raw images
    assert raw["verification_auc"] - enc["verification_auc"] > 0.08
    assert enc["top1"] < 0.7 * raw["top1"]
