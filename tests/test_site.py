"""A site's ClientApp: its optimiser continues across visits (a stated choice), and its memory never leaves it."""

import math

from flwr.app import ArrayRecord, Message, RecordDict

from privmed.engine.grid import InProcessGrid
from privmed.engine.session import FIRST_NODE_ID, one_site_grid
from privmed.protocols.base import TrainInstruction
from privmed.site import ModelSpec, make_client_app


def test_adam_continues_across_a_sites_visits_and_stays_at_the_site(small_fed):
    site, spec, memory = small_fed.sites[0], ModelSpec("cnn", 1, 2, "classification"), {}
    app = make_client_app(site, spec, site_index=0, memory=memory)
    grid = InProcessGrid({FIRST_NODE_ID: app})
    arrays = ArrayRecord(spec.build(0).state_dict())
    steps = math.ceil(len(site.train) / 8)
    for rnd in (1, 2):
        config = TrainInstruction(local_epochs=1, batch_size=8, seed=rnd, server_round=rnd).to_record()
        (reply,) = grid.send_and_receive(
            [Message(RecordDict({"arrays": arrays, "config": config}), FIRST_NODE_ID, "train", group_id=str(rnd))]
        )
        assert set(reply.content.keys()) == {"arrays", "metrics"}  # the optimiser's state is not in the reply
        arrays = reply.content["arrays"]
        assert int(memory["optimizer"]["adam"]["state"][0]["step"]) == rnd * steps  # one optimisation, not restarts


def test_a_site_without_memory_restarts_its_optimiser(small_fed):
    site, spec = small_fed.sites[0], ModelSpec("cnn", 1, 2, "classification")
    grid = one_site_grid(site, spec)  # the inversion probe's victim: one step, no memory
    config = TrainInstruction(local_epochs=1, batch_size=8).to_record()
    arrays = ArrayRecord(spec.build(0).state_dict())
    (reply,) = grid.send_and_receive(
        [Message(RecordDict({"arrays": arrays, "config": config}), FIRST_NODE_ID, "train", group_id="1")]
    )
    assert not reply.has_error()
