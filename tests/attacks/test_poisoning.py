"""Poisoning through the real FedAvg round loop: no malicious site, no backdoor; robust aggregators assume an honest
majority."""

import numpy as np
import pytest
import torch

from privmed.attacks import poisoning
from privmed.config import RunConfig
from privmed.errors import PrivmedError
from privmed.protocols.base import TrainSettings

CFG = RunConfig(train=TrainSettings(rounds=4, local_epochs=3, lr=1e-2, batch_size=8))


def test_poison_arrays_triggers_and_relabels_the_requested_fraction(easy_fed):
    data = easy_fed.sites[0].train
    rng = np.random.default_rng(0)
    bd = poisoning.poison_arrays(data, poisoning.PoisonConfig(fraction=0.5, patch=4), 2, rng)
    stamped = (bd.images[:, 0, -5:-1, -5:-1] == poisoning.add_trigger(data.images, 4)[:, 0, -5:-1, -5:-1]).all(
        axis=(1, 2)
    )
    changed = (bd.images != data.images).any(axis=(1, 2, 3))
    assert changed.sum() == 12 and stamped[changed].all() and (bd.labels[changed] == 1).all()
    lf = poisoning.poison_arrays(data, poisoning.PoisonConfig(kind="label-flip", fraction=1.0), 2, rng)
    assert (lf.labels == 1 - data.labels).all() and np.array_equal(lf.images, data.images)


def test_backdoor_needs_malicious_sites_and_a_malicious_majority_captures_krum_and_median(easy_fed):
    honest = poisoning.poisoning_experiment(
        CFG, easy_fed, poisoning.PoisonConfig(n_malicious=0), aggregators=("fedavg",)
    )
    assert honest["results"]["fedavg"]["attack_success"] < 0.2 and honest["results"]["fedavg"]["clean_accuracy"] > 0.9
    majority = poisoning.poisoning_experiment(
        CFG, easy_fed, poisoning.PoisonConfig(n_malicious=3), aggregators=("krum", "fedmedian")
    )
    assert "n > 2f + 2" in majority["results"]["krum"]["not_applicable"]  # refused, not mis-measured
    r = majority["results"]["fedmedian"]  # the median is the attackers' update: backdoor in, clean task intact
    assert r["attack_success"] > 0.8 and r["without_trigger"] < 0.2 and r["clean_accuracy"] > 0.9


def test_krum_is_refused_outside_n_greater_than_2f_plus_2():
    with pytest.raises(PrivmedError, match="n > 2f \\+ 2"):
        poisoning.make_aggregator("krum", n_sites=4, n_malicious=1)
    poisoning.make_aggregator("krum", n_sites=5, n_malicious=1)  # 5 > 4: valid


def test_wilson_interval_closed_form():
    lo, hi = poisoning.wilson(5, 10)  # p = 0.5, n = 10: 0.5 -/+ 0.2366 (Wilson 1927)
    assert abs(lo - 0.2366) < 1e-3 and abs(hi - 0.7634) < 1e-3


def test_bad_poisoning_requests_are_refused(easy_fed):
    with pytest.raises(PrivmedError, match="5 malicious sites"):
        poisoning.poison_federation(easy_fed, poisoning.PoisonConfig(n_malicious=5))
    with pytest.raises(PrivmedError, match="unknown aggregator"):
        poisoning.make_aggregator("mean-ish", n_sites=4, n_malicious=1)


def test_model_replacement_sends_the_boosted_update():
    from flwr.app import ArrayRecord, Message, RecordDict

    glob = {"w": torch.zeros(3)}
    msg = Message(RecordDict({"arrays": ArrayRecord(glob)}), 2, "train")

    def trained(m, ctx):  # the honest training the malicious site runs first
        return Message(RecordDict({"arrays": ArrayRecord({"w": torch.tensor([1.0, -1.0, 0.5])})}), reply_to=m)

    sent = poisoning.model_replacement_mod(4.0)(msg, None, trained).content["arrays"].to_torch_state_dict()
    assert torch.equal(sent["w"], torch.tensor([4.0, -4.0, 2.0]))
