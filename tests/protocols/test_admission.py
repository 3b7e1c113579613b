"""Admission ensemble (Amir-Khalili 2017): cross-site validation admits, rank weights, pruning, liveness."""

from privmed.config import from_dict
from privmed.engine.session import assemble
from privmed.protocols.admission import admitted, rank_weights
from privmed.run import execute

CONFIG = from_dict(
    {
        "protocol": "admission",
        "seed": 1,
        "data": {"sites": 4, "image_size": 16},
        "train": {"rounds": 3, "lr": 0.01, "batch_size": 16},
    }
)


def test_rank_weights_favour_the_lowest_loss_and_prune_below_the_median():
    losses = {2: 0.9, 3: 0.5, 4: 0.7, 5: 1.2}
    assert rank_weights(losses, prune=False) == {3: 4, 4: 3, 2: 2, 5: 1}
    assert rank_weights(losses, prune=True) == {3: 2, 4: 1}  # the worse half is dropped
    assert rank_weights({2: 0.4, 3: 0.6, 4: 0.5}, prune=True) == {2: 2, 4: 1}  # odd: the median model stays
    assert rank_weights({}, prune=True) == {}


def test_a_model_is_admitted_only_above_the_validation_share():
    assert admitted({2: 1.0, 3: 0.6, 4: 0.61, 5: 0.0}, 0.6) == [2, 4]  # "more than 60 % of the data"


def test_the_ensemble_is_the_rank_weighted_admitted_half():
    result = execute(CONFIG)
    log = result.reliability["admission"]
    assert [entry["round"] for entry in log] == [1, 2, 3]
    last = log[-1]
    assert sorted(last["admitted"]) == [2, 3, 4, 5] and all(c == 1.0 for c in last["coverage"].values())
    losses = {int(k): v for k, v in last["validation_loss"].items()}
    best, second = sorted(losses, key=losses.get)[:2]
    assert last["weights"] == {str(best): 2, str(second): 1}
    assert len(result.predictor) == 3  # best listed twice, second once: weights 2 and 1


def test_a_site_that_leaves_and_rejoins_keeps_the_run_live():
    """Site node 5 is unreachable in round 2 (every message to it lost) and back in round 3."""

    def away_in_round_2(msg, reply):
        return None if msg.metadata.dst_node_id == 5 and msg.metadata.group_id == "2" else reply

    session = assemble(CONFIG, fault=away_in_round_2)
    rounds = []
    session.ctx.evaluate_fn = lambda rnd, predictor: rounds.append(rnd) or {}
    session.protocol.run(session.ctx)
    log = session.ctx.state["admission"]
    assert rounds == [1, 2, 3]
    assert 5 not in log[1]["trained"] and 5 in log[2]["trained"]
    # in round 2 the others' models were validated on 3 of 4 sites' data: still admitted if that is > 60 %
    assert all(log[1]["coverage"][str(n)] < 1.0 for n in (2, 3, 4))
    assert log[1]["coverage"]["5"] == 1.0  # site 5's last model is still validated by the others
