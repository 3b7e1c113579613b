"""Each protocol of the review on a small federation: mechanics, not accuracy."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message, RecordDict

from privmed.config import RunConfig
from privmed.engine.session import FIRST_NODE_ID, assemble
from privmed.errors import PrivmedError
from privmed.protocols import cwt, ensemble, fedavg, single, swt
from privmed.protocols.base import TrainSettings


def make_ctx(fed, rounds=2, fault=None, options=None, protocol="fedavg"):
    """The session's context for ``protocol`` on ``fed`` (built by privmed's one assembly), recording each
    evaluation."""
    session = assemble(
        RunConfig(protocol=protocol, options=options or {}, train=TrainSettings(rounds=rounds)), fed=fed, fault=fault
    )
    seen = []
    session.ctx.evaluate_fn = lambda r, p: seen.append((r, p))
    return session.ctx, seen


def flat(arrays: ArrayRecord) -> np.ndarray:
    return np.concatenate([a.numpy().ravel() for a in arrays.values()])


def train_order(grid) -> list[int]:
    return [r["node"] for r in grid.traffic.records if r["direction"] == "down" and r["type"] == "train"]


def test_cwt_visits_every_site_in_fixed_order_each_round(small_fed):
    ctx, seen = make_ctx(small_fed, rounds=2, protocol="cwt")
    out = cwt.run(ctx)
    nodes = [FIRST_NODE_ID + i for i in range(4)]
    assert train_order(ctx.grid) == nodes * 2
    assert [r for r, _ in seen] == [1, 2]
    assert not np.allclose(flat(out.predictor), flat(ctx.initial))


def test_cwt_shuffled_order_changes_between_rounds_and_repeats_with_seed(small_fed):
    orders = []
    for _ in range(2):
        ctx, _ = make_ctx(small_fed, rounds=4, options={"order": "shuffled"}, protocol="cwt")
        cwt.run(ctx)
        orders.append(train_order(ctx.grid))
    assert orders[0] == orders[1]
    per_round = [tuple(orders[0][i : i + 4]) for i in range(0, 16, 4)]
    assert len(set(per_round)) > 1 and all(sorted(r) == sorted(per_round[0]) for r in per_round)


def test_cwt_rejects_unknown_order_and_misspelt_option_before_running(small_fed):
    with pytest.raises(PrivmedError, match="fixed, shuffled"):
        make_ctx(small_fed, options={"order": "random-walk"}, protocol="cwt")
    with pytest.raises(PrivmedError, match=r"unknown option 'oder' for protocol cwt; valid options: order \(str\)"):
        make_ctx(small_fed, options={"oder": "shuffled"}, protocol="cwt")


def test_swt_passes_the_model_once_with_the_whole_budget(small_fed):
    ctx, seen = make_ctx(small_fed, rounds=3, protocol="swt")
    swt.run(ctx)
    assert train_order(ctx.grid) == [FIRST_NODE_ID + i for i in range(4)]
    assert len(seen) == 4


def test_ensemble_keeps_one_model_per_site(small_fed):
    ctx, seen = make_ctx(small_fed, rounds=1, protocol="ensemble")
    out = ensemble.run(ctx)
    assert isinstance(out.predictor, list) and len(out.predictor) == 4
    assert not np.allclose(flat(out.predictor[0]), flat(out.predictor[1]))


def test_single_trains_only_the_chosen_site(small_fed):
    ctx, _ = make_ctx(small_fed, rounds=2, options={"site": 2}, protocol="single")
    single.run(ctx)
    assert set(train_order(ctx.grid)) == {FIRST_NODE_ID + 2}
    with pytest.raises(PrivmedError, match="out of range"):
        make_ctx(small_fed, options={"site": 7}, protocol="single")


def test_fedavg_is_the_example_weighted_mean_of_site_updates(small_fed):
    """One FedAvg round through Flower equals averaging what each site returns."""
    ctx, _ = make_ctx(small_fed, rounds=1)
    out = fedavg.run(ctx)
    # replay each site's local training with the same round config
    ctx2, _ = make_ctx(small_fed, rounds=1)
    updates, weights = [], []
    for i, site in enumerate(small_fed.sites):
        msg = Message(
            RecordDict({"arrays": ctx2.initial, "config": ctx2.round_config(1)}),
            FIRST_NODE_ID + i,
            "train",
            group_id="1",
        )
        (reply,) = ctx2.grid.send_and_receive([msg])
        updates.append(flat(reply.content["arrays"]))
        weights.append(len(site.train))
    expected = np.average(np.stack(updates), axis=0, weights=weights)
    np.testing.assert_allclose(flat(out.predictor), expected, rtol=1e-5, atol=1e-6)


def _poison(kind):
    def fault(msg, reply):
        if msg.metadata.dst_node_id != FIRST_NODE_ID + 1 or msg.metadata.message_type != "train":
            return reply
        arrays = reply.content["arrays"]
        bad = {}
        for k, a in arrays.items():
            t = torch.from_numpy(a.numpy().copy())
            bad[k] = torch.full_like(t, float("nan")) if kind == "nan" else torch.zeros(3)
        return Message(RecordDict({"arrays": ArrayRecord(bad), "metrics": reply.content["metrics"]}), reply_to=msg)

    return fault


@pytest.mark.parametrize("kind", ["nan", "shape"])
@pytest.mark.parametrize("protocol", [fedavg, cwt])
def test_bad_update_is_rejected_and_the_round_goes_on(small_fed, kind, protocol):
    ctx, seen = make_ctx(small_fed, rounds=2, fault=_poison(kind), protocol=protocol.SPEC.name)
    out = protocol.run(ctx)
    assert np.isfinite(flat(out.predictor)).all() and not np.allclose(flat(out.predictor), flat(ctx.initial))
    assert len(seen) == 2
    # the poisoned reply was rejected in each round (and only it): the rounds went on with the other sites
    assert [r["round"] for r in ctx.rejections] == [1, 2]
    assert all(("NaN or Inf" if kind == "nan" else "has shape") in r["reason"] for r in ctx.rejections)
    assert {r["node"] for r in ctx.rejections} == {FIRST_NODE_ID + 1}
    assert all(("NaN or Inf" if kind == "nan" else "has shape") in r["reason"] for r in ctx.rejections)
    assert len(ctx.rejections) == 2
    assert ("NaN" if kind == "nan" else "shape") in ctx.rejections[0]["reason"]


def test_coordinator_never_receives_site_images(small_fed):
    """Every byte a site sends is model weights or metrics: no image of the site appears in it."""
    from privmed.engine.grid import to_wire

    ctx, _ = make_ctx(small_fed, rounds=1)
    received = []
    ctx.grid.fault = lambda m, r: received.append(r) or r
    fedavg.run(ctx)
    assert len(received) == 4
    for reply in received:
        assert set(reply.content.keys()) == {"arrays", "metrics"}
        wire = b"".join(to_wire(reply)[1].values())
        for site in small_fed.sites:
            for img in site.train.images[:5]:
                raw = img.tobytes()
                assert raw[len(raw) // 2 : len(raw) // 2 + 64] not in wire
