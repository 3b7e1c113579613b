"""InProcessGrid: Flower's Grid contract, byte counting, isolation, failures as replies."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from privmed.engine.grid import InProcessGrid, to_wire


def echo_app() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg, ctx):
        arrays = msg.content["arrays"]
        w = arrays["w"].numpy() + 1.0
        return Message(
            RecordDict(
                {"arrays": ArrayRecord({"w": torch.from_numpy(w)}), "metrics": MetricRecord({"num-examples": 1})}
            ),
            reply_to=msg,
        )

    @app.evaluate()
    def evaluate(msg, ctx):
        raise RuntimeError("scanner offline")

    return app


def _msg(node: int, kind: str = "train", n: int = 100) -> Message:
    return Message(
        RecordDict({"arrays": ArrayRecord({"w": torch.zeros(n)}), "config": ConfigRecord({"x": 1})}),
        node,
        kind,
        group_id="1",
    )


def test_reply_comes_from_the_site_and_bytes_match_flowers_wire_size():
    grid = InProcessGrid({2: echo_app(), 3: echo_app()})
    msg = _msg(2)
    expected_down = sum(len(b) for b in to_wire(msg)[1].values())
    (reply,) = grid.send_and_receive([msg])
    assert reply.metadata.src_node_id == 2
    assert reply.metadata.reply_to_message_id == msg.metadata.message_id
    np.testing.assert_array_equal(reply.content["arrays"]["w"].numpy(), np.ones(100))
    down = [r for r in grid.traffic.records if r["direction"] == "down"]
    assert down[0]["bytes"] == expected_down
    # 100 float32 = 400 bytes of payload; the wire form is larger but of that order
    assert 400 < grid.traffic.total("up") < 4000


def test_bytes_grow_with_payload():
    grid = InProcessGrid({2: echo_app()})
    grid.send_and_receive([_msg(2, n=10)])
    small = grid.traffic.total()
    grid.send_and_receive([_msg(2, n=10_000)])
    assert grid.traffic.total() - small > 2 * 4 * 10_000 * 0.99


def test_site_gets_a_copy_not_the_coordinators_object():
    grid = InProcessGrid({2: echo_app()})
    msg = _msg(2)
    grid.send_and_receive([msg])
    np.testing.assert_array_equal(msg.content["arrays"]["w"].numpy(), np.zeros(100))


def test_a_failing_site_returns_an_error_reply():
    grid = InProcessGrid({2: echo_app()})
    (reply,) = grid.send_and_receive([_msg(2, "evaluate")])
    assert reply.has_error()
    assert "scanner offline" in reply.error.reason


def test_fault_hook_can_drop_a_reply():
    grid = InProcessGrid({2: echo_app(), 3: echo_app()}, fault=lambda m, r: None if m.metadata.dst_node_id == 3 else r)
    replies = list(grid.send_and_receive([_msg(2), _msg(3)]))
    assert [r.metadata.src_node_id for r in replies] == [2]


def test_unknown_node_is_refused():
    grid = InProcessGrid({2: echo_app()})
    with pytest.raises(ValueError, match="no site"):
        grid.push_messages([_msg(9)])
