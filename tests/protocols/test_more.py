"""Protocol ``more`` (Vizitiu 2019): the server trains on MORE ciphertexts only, and the key-recovery attack
decrypts everything it was sent."""

import dataclasses

import numpy as np
import pytest
import torch

from privmed.attacks import more_key_recovery as kr
from privmed.audit import not_applicable
from privmed.config import RunConfig
from privmed.engine.session import assemble
from privmed.errors import PrivmedError
from privmed.privacy import more
from privmed.privacy.more_net import onehot
from privmed.privacy.sealed import from_bytes, sealed_record
from privmed.protocols.base import TrainSettings
from privmed.protocols.registry import PROTOCOLS

CFG = RunConfig(protocol="more", model="poly-cnn", privacy={"mechanism": "more"}, train=TrainSettings(rounds=1))


def run_recording(fed, cfg=CFG):
    """Run the protocol; record every reply the coordinator receives (its view)."""
    session = assemble(cfg, fed=fed)
    seen, send = [], session.grid.send_and_receive

    def recording(msgs, *args, **kwargs):
        replies = list(send(msgs, *args, **kwargs))
        seen.extend(replies)
        return replies

    session.grid.send_and_receive = recording
    out = session.protocol.run(session.ctx)
    return session, out, seen


@pytest.fixture(scope="module")
def more_run(small_fed):
    return run_recording(small_fed)


def test_the_server_receives_only_ciphertexts_4x_the_data_and_its_model_is_the_key_holders(more_run, small_fed):
    session, out, seen = more_run
    pixels = sum(s.train.images.size for s in small_fed.sites)
    uploads = [r.content["more-data"] for r in seen]
    assert sum(u["images"].numpy().size for u in uploads) == 4 * pixels
    for site, u in zip(small_fed.sites, uploads):
        ct = u["images"].numpy()
        assert ct.shape == (*site.train.images.shape, 2, 2)
        assert not np.allclose(ct[..., 0, 0], site.train.images, atol=1e-3)  # no entry carries the plaintext
    assert out.measured["communication"]["expansion_factor"] == 4.0
    assert out.measured["runtime"]["time_ratio_vs_plaintext"] > 1
    assert sealed_record(out.predictor) is not None  # the server holds the model encrypted ...
    model = session.reveal(out.predictor)  # ... and the key holders decrypt it into poly-cnn weights
    built = session.model.build()
    assert set(model.keys()) == set(built.state_dict())
    assert not np.allclose(model["head.2.weight"].numpy(), built.state_dict()["head.2.weight"].numpy())


def test_key_recovery_decrypts_a_more_trained_runs_data_and_model_exactly(more_run, small_fed):
    session, out, seen = more_run
    images = torch.cat([torch.from_numpy(r.content["more-data"]["images"].numpy()) for r in seen])
    labels = torch.cat([torch.from_numpy(r.content["more-data"]["labels"].numpy()) for r in seen])
    truth_x = torch.from_numpy(np.concatenate([s.train.images for s in small_fed.sites]))
    truth_y = onehot(np.concatenate([s.train.labels for s in small_fed.sites]), 2)
    one_pair = kr.known_plaintext_key(truth_x[0, 0, 0, :1], images[0, 0, 0, :1])  # one known pixel
    blind = kr.ciphertext_only_key(images)  # no plaintext at all
    for key in (one_pair, blind):
        assert kr.exact_fraction(more.decrypt_with(key, images), truth_x) == 1.0
        assert kr.exact_fraction(more.decrypt_with(key, labels), truth_y) == 1.0
    wrong = more.keygen().s  # null: a random key decrypts nothing
    assert kr.exact_fraction(more.decrypt_with(wrong, images), truth_x) == 0.0
    sealed = from_bytes(bytes(sealed_record(out.predictor)["weights"]))  # the model the server trained
    revealed = session.reveal(out.predictor)
    for name, a in sealed.items():
        stolen = more.decrypt_with(one_pair, torch.from_numpy(a.numpy()))
        assert torch.allclose(stolen.float(), torch.from_numpy(revealed[name].numpy()), atol=1e-4)


def test_more_needs_its_key_and_a_polynomial_network_and_says_so(small_fed):
    with pytest.raises(PrivmedError, match="--model poly-cnn"):
        assemble(dataclasses.replace(CFG, model="cnn"), fed=small_fed)
    session = assemble(dataclasses.replace(CFG, privacy={}), fed=small_fed)
    with pytest.raises(PrivmedError, match="--privacy more"):
        session.protocol.run(session.ctx)
    with pytest.raises(PrivmedError, match="use it with --protocol more"):
        assemble(dataclasses.replace(CFG, protocol="fedavg"), fed=small_fed)


def test_only_the_more_protocol_is_audited_for_key_recovery():
    assert not_applicable("key-recovery", protocol="more", task="classification", privacy={}) is None
    for name in PROTOCOLS:
        if name != "more":
            assert "MORE" in not_applicable("key-recovery", protocol=name, task="classification", privacy={})


def test_the_audit_reports_pairs_needed_and_exact_fractions_beside_null_and_positive_control(more_run, small_fed):
    from privmed.attacks.harness import Target, measure_key_recovery
    from privmed.audit import AuditResult

    session, out, _ = more_run
    r = measure_key_recovery(Target(CFG, small_fed, session.model, session.reveal(out.predictor)))
    assert r["images"] == sum(len(s.train) for s in small_fed.sites)
    assert r["known_plaintext"]["pairs_needed"] == 1
    assert r["ciphertext_only"] == {"images_exact": 1.0, "labels_exact": 1.0}
    assert r["null_random_key"]["images_exact"] == 0.0
    assert r["positive_control_true_key"]["images_exact"] == 1.0
    headline = AuditResult("r", "more", "more", 0, "", results={"key-recovery": r}).leakage()
    assert headline["MORE images decrypted, 1 known pixel"] == 1.0


def test_a_malformed_upload_excludes_that_site_and_the_server_trains_on_the_others(small_fed):
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    def truncate(msg, reply):
        if msg.metadata.dst_node_id != 3 or "more-data" not in reply.content.array_records:
            return reply
        bad = ArrayRecord({"images": Array(np.zeros((2, 1, 16, 16, 2), np.float32)), "labels": Array(np.zeros(2))})
        content = {"more-data": bad, "more": ConfigRecord({"key-id": "x"}), "metrics": MetricRecord({"n": 1})}
        return Message(RecordDict(content), reply_to=msg)

    session = assemble(CFG, fed=small_fed, fault=truncate)
    out = session.protocol.run(session.ctx)
    assert [(r["node"], r["reason"].split(":")[0]) for r in session.ctx.rejections] == [(3, "malformed ciphertexts")]
    expected = sum(len(s.train) for i, s in enumerate(small_fed.sites) if i != 1)
    assert out.measured["communication"]["more_ciphertext_bytes"] == expected * (16 * 16 + 2) * 16
