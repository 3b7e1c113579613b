"""The coordinator distrusts what sites send: a bad reply rejects that site for the round, never the run.

The property-based test sends one random malformed reply from one of three
sites through FedAvg, CWT, DSSGD and SNT (encrypted), and checks that the run
completes, that site is rejected under its own node id, and the model is
exactly that of the same run with that one reply lost in transit.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privmed.config import RunConfig, TrainSettings
from privmed.engine.session import FIRST_NODE_ID, assemble
from privmed.engine.validate import reply_problem
from tests.privacy.conftest import make_fed

FED = make_fed(n_sites=3, patients=4, images=2, size=8)
NODES = [FIRST_NODE_ID + i for i in range(3)]
ROUNDS = 2
PRIVACY = {"snt": {"mechanism": "aes-gcm"}}


def run(protocol: str, fault=None, *, rounds: int = ROUNDS):
    """The protocol's model (as its sites see it) and its rejections, on the small federation."""
    cfg = RunConfig(protocol=protocol, privacy=PRIVACY.get(protocol, {}), train=TrainSettings(rounds=rounds))
    session = assemble(cfg, fed=FED, fault=fault)
    out = session.protocol.run(session.ctx)
    predictor = session.reveal(out.predictor)
    return np.concatenate([a.numpy().ravel() for a in predictor.values()]), session.ctx.rejections


def at(rnd: int, node: int, change):
    """A fault hook applying ``change(msg, reply)`` to one site's train reply in one round."""

    def hook(msg, reply):
        if (msg.metadata.message_type, msg.metadata.group_id, msg.metadata.dst_node_id) == ("train", str(rnd), node):
            return change(msg, reply)
        return reply

    return hook


def rebuilt(msg: Message, records: dict) -> Message:
    return Message(RecordDict(records), reply_to=msg)


def corrupt_array(record: ArrayRecord, how: str) -> ArrayRecord:
    """One array of ``record`` changed: NaN, Inf, huge values, another dtype or another shape."""
    out = {k: Array(a.numpy().copy()) for k, a in record.items()}
    key = sorted(out)[-1]
    a = out[key].numpy().copy()
    if how == "dtype":
        a = a.astype(np.float64 if a.dtype.kind == "f" else np.int32)
    elif how == "shape":
        a = np.concatenate([a.ravel(), a.ravel()[:1]])
    elif a.dtype.kind == "f":
        a.ravel()[0] = {"nan": np.nan, "inf": np.inf, "huge": 1e30}[how]
    else:  # an index array: out of range
        a.ravel()[0] = 10**12
    out[key] = Array(a)
    return ArrayRecord(out)


def mutation(kind: str, detail):
    """(msg, honest reply) -> a malformed reply of the given kind."""

    def change(msg: Message, reply: Message) -> Message:
        content = dict(reply.content.items())
        arrays = [k for k in content if k in reply.content.array_records]
        # a site that sends no metrics (SNT, FNT) sending some is malformed too
        metrics = dict(reply.content["metrics"]) if "metrics" in reply.content.metric_records else {}
        if kind == "error":
            return Message(Error(code=0, reason="site exploded"), reply_to=msg)
        if kind == "drop":
            del content[sorted(content)[detail % len(content)]]
        elif kind == "extra-arrays":
            content["extra"] = ArrayRecord({"x": Array(np.zeros(3, dtype=np.float32))})
        elif kind == "extra-metrics":
            content["more"] = MetricRecord({"num-examples": 1.0})
        elif kind == "count":
            content["metrics"] = MetricRecord({**metrics, "num-examples": detail})
        elif kind == "no-count" and metrics:
            content["metrics"] = MetricRecord({k: v for k, v in metrics.items() if k != "num-examples"})
        elif kind == "no-count":
            content["metrics"] = MetricRecord({"train_loss": 0.5})
        elif kind == "metric":
            content["metrics"] = MetricRecord({**metrics, "train_loss": detail})
        elif kind == "scaled" and "arrays" in content:  # the update times 1e6
            sent = msg.content["arrays"]
            content["arrays"] = ArrayRecord(
                {k: Array(sent[k].numpy() + (a.numpy() - sent[k].numpy()) * 1e6) for k, a in content["arrays"].items()}
            )
        elif kind == "scaled" and "up" in content:
            up = content["up"]
            content["up"] = ArrayRecord({"idx": up["idx"], "val": Array(up["val"].numpy() * 1e6)})
        elif arrays:  # nan | inf | huge | dtype | shape
            content[arrays[0]] = corrupt_array(content[arrays[0]], kind)
        else:  # a config record (a sealed blob): a value of the wrong type
            name = next(k for k in content if k != "metrics")
            content[name] = ConfigRecord({"blob": "not bytes"})
        return rebuilt(msg, content)

    return change


MUTATIONS = st.one_of(
    st.tuples(st.sampled_from(["error", "extra-arrays", "extra-metrics", "no-count", "scaled"]), st.none()),
    st.tuples(st.sampled_from(["nan", "inf", "huge", "dtype", "shape"]), st.none()),
    st.tuples(st.just("drop"), st.integers(0, 1)),
    st.tuples(st.just("count"), st.sampled_from([0.0, -500.0, 1e12, float("nan"), float("inf"), 2.5, 10_000.0])),
    st.tuples(st.just("metric"), st.sampled_from([float("nan"), float("inf")])),
)

_lost: dict[tuple, tuple] = {}


def lost_reply_run(protocol: str, rnd: int, node: int):
    """The run without that site's contribution in that round: its reply lost in transit (cached)."""
    if (protocol, rnd, node) not in _lost:
        _lost[protocol, rnd, node] = run(protocol, at(rnd, node, lambda msg, reply: None))
    return _lost[protocol, rnd, node]


@pytest.mark.parametrize("protocol", ["fedavg", "cwt", "dssgd", "snt"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated=MUTATIONS, rnd=st.integers(1, ROUNDS), node=st.sampled_from(NODES))
def test_a_malformed_reply_rejects_that_site_for_the_round_and_nothing_else(protocol, mutated, rnd, node):
    model, rejections = run(protocol, at(rnd, node, mutation(*mutated)))
    expected, expected_rejections = lost_reply_run(protocol, rnd, node)
    mine = [r for r in rejections if (r["round"], r["node"]) == (rnd, node)]
    assert len(mine) == 1 and mine[0]["reason"] != "no reply", rejections
    assert [(r["round"], r["node"]) for r in rejections] == [(r["round"], r["node"]) for r in expected_rejections]
    np.testing.assert_array_equal(model, expected)


# ----------------------------------------------------------------------------- the defects the issue found, one each


def _reply(arrays: ArrayRecord, metrics: dict, *, to: Message, extra: dict | None = None) -> Message:
    return rebuilt(to, {"arrays": arrays, "metrics": MetricRecord(metrics), **(extra or {})})


@pytest.fixture
def sent() -> tuple[Message, ArrayRecord]:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 0  # as a ServerApp process has it
    arrays = ArrayRecord({"w": Array(np.ones((2, 3), dtype=np.float32))})
    msg = Message(RecordDict({"arrays": arrays}), FIRST_NODE_ID, "train", group_id="1")
    msg.metadata.__dict__["_message_id"] = "m1"
    return msg, arrays


@pytest.mark.parametrize("count", [1e12, -500.0, float("nan"), 0.0, 2.5])
def test_an_absurd_num_examples_is_rejected(sent, count):
    msg, arrays = sent
    problem = reply_problem(_reply(arrays, {"num-examples": count}, to=msg), arrays, declared=40)
    assert problem and ("num-examples" in problem or "finite" in problem)
    assert reply_problem(_reply(arrays, {"num-examples": 40.0}, to=msg), arrays, declared=40) is None


def test_a_reply_without_metrics_or_with_two_weight_records_is_rejected(sent):
    msg, arrays = sent
    bare = rebuilt(msg, {"arrays": arrays})
    assert "records ['arrays'], expected ['arrays', 'metrics']" in reply_problem(bare, arrays)
    two = _reply(arrays, {"num-examples": 4.0}, to=msg, extra={"more": arrays})
    assert "records ['arrays', 'metrics', 'more']" in reply_problem(two, arrays)


def test_an_update_a_million_times_larger_than_the_others_is_an_outlier():
    from privmed.engine.validate import outliers

    norms = {2: 10.4, 3: 9.1, 4: 3.1e6, 5: 11.0}
    assert set(outliers(norms, ratio=100.0, fallback=1.0)) == {4}
    assert outliers({2: 10.4, 3: 3.1e6}, ratio=100.0, fallback=1.0).keys() == {3}  # two sites: each against the other
    assert outliers({2: 3.1e6}, ratio=100.0, fallback=10.0).keys() == {2}  # alone: against the weights sent


def test_a_superlink_error_reply_is_filed_under_the_site_it_was_sent_to(sent):
    """On a deployment, the SuperLink answers for a failed node with an error from node 1: file it under the node."""
    from privmed.engine.validate import by_destination

    msg, _ = sent
    error = Message(Error(code=0, reason="NODE_UNAVAILABLE"), reply_to=msg)
    error.metadata.__dict__["_src_node_id"] = 1
    assert error.metadata.src_node_id == 1
    assert list(by_destination([msg], [error])) == [FIRST_NODE_ID]

    def superlink_error(msg, reply):
        out = Message(Error(code=0, reason="NODE_UNAVAILABLE"), reply_to=msg)
        out.metadata.__dict__["_src_node_id"] = 1
        return out

    _, rejections = run("fedavg", at(2, NODES[2], superlink_error))
    assert [(r["round"], r["node"]) for r in rejections] == [(2, NODES[2])]


@pytest.mark.parametrize("protocol", ["fedavg", "cwt"])
def test_fedavg_and_cwt_reject_an_update_scaled_a_million_times_and_a_huge_count(protocol):
    scaled = mutation("scaled", None)
    huge = mutation("count", 1e12)
    fault = at(1, NODES[1], scaled)
    model, rejections = run(protocol, lambda m, r: huge(m, r) if m.metadata.group_id == "2" else fault(m, r))
    reasons = {(r["round"], r["node"]): r["reason"] for r in rejections}
    assert "update norm" in reasons[1, NODES[1]]
    assert all(("num-examples" in reasons[2, n]) for n in NODES)  # every site claimed 1e12 in round 2
    assert np.isfinite(model).all() and np.abs(model).max() < 100


def test_fedavg_survives_a_reply_without_metrics_and_one_with_two_array_records():
    """Flower's FedAvg raised InconsistentMessageReplies and ended the run."""

    def fault(msg, reply):
        if msg.metadata.message_type != "train":
            return reply
        if msg.metadata.dst_node_id == NODES[0]:
            return rebuilt(msg, {"arrays": reply.content["arrays"]})
        if msg.metadata.dst_node_id == NODES[1]:
            return rebuilt(msg, {**dict(reply.content.items()), "again": reply.content["arrays"]})
        return reply

    model, rejections = run("fedavg", fault)
    assert {(r["round"], r["node"]) for r in rejections} == {(rnd, n) for rnd in (1, 2) for n in NODES[:2]}
    # the same as a run in which those two sites' replies were lost: only the third site's update counts
    lost, _ = run(
        "fedavg", lambda m, r: None if m.metadata.message_type == "train" and m.metadata.dst_node_id in NODES[:2] else r
    )
    np.testing.assert_array_equal(model, lost)


def test_a_site_refuses_to_train_or_evaluate_non_finite_weights():
    from privmed.site import ModelSpec, load_arrays

    spec = ModelSpec("cnn", in_channels=1, n_classes=2, task="classification")
    model = spec.build()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key].view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        load_arrays(model, ArrayRecord(state))
    state[key].view(-1)[0] = 1e30
    load_arrays(model, ArrayRecord(state))  # finite: the coordinator's norm bound is what limits size
