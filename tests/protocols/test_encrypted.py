"""Encrypted protocols against their plaintext twins on the same data and seed.

HE-FedAvg and SecAgg-FedAvg must give FedAvg's model (up to quantisation or
CKKS noise), SNT and FNT exactly CWT's; the coordinator must see no
plaintext update; bad ciphertexts and blobs exclude one site and the run goes on.
"""

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from privmed.config import RunConfig
from privmed.engine.result import evaluate_predictor
from privmed.engine.session import FIRST_NODE_ID, assemble, model_spec, resolve
from privmed.errors import PrivmedError
from privmed.privacy.registry import make_mechanism
from privmed.protocols import cwt, fedavg, he_fedavg, secagg_fedavg
from privmed.protocols.base import TrainSettings
from privmed.protocols.registry import PROTOCOLS
from privmed.protocols.weight_transmission import fnt, snt


def run_protocol(
    fed, fn, protocol, privacy=None, *, rounds=2, fault=None, options=None, evaluated=None, site_mods=None
):
    """Run ``fn`` on the session privmed assembles; with ``evaluated`` (a list), reveal each round's predictor into
    it, as the harness does."""
    cfg = RunConfig(protocol=protocol, privacy=privacy or {}, options=options or {}, train=TrainSettings(rounds=rounds))
    session = assemble(cfg, fed=fed, fault=fault, site_mods=site_mods)
    if evaluated is not None:
        session.ctx.evaluate_fn = lambda r, p: evaluated.append((r, session.reveal(p)))
    out = fn(session.ctx)
    return session.reveal(out.predictor), session.ctx, out, session.mechanism


def dropping(*visits):
    """A fault hook that drops the train replies of the given (round, node) visits."""

    def hook(msg, reply):
        return (
            None
            if (int(msg.metadata.group_id), msg.metadata.dst_node_id) in visits and msg.metadata.message_type == "train"
            else reply
        )

    return hook


def failing(rnd):
    """A site mod that fails a site's train message of round ``rnd`` before it trains."""

    def mod(msg, context, call_next):
        if msg.metadata.message_type == "train" and msg.metadata.group_id == str(rnd):
            raise RuntimeError("cannot open the weights")
        return call_next(msg, context)

    return mod


def tampering(rnd, node):
    """A fault hook that flips a byte of the blob a site uploads in one visit (in transit to the coordinator)."""

    def hook(msg, reply):
        if (
            msg.metadata.dst_node_id == node
            and msg.metadata.group_id == str(rnd)
            and msg.metadata.message_type == "train"
        ):
            blob = bytearray(reply.content["sealed"]["blob"])
            blob[-3] ^= 0xFF
            reply.content["sealed"] = ConfigRecord({"blob": bytes(blob)})
        return reply

    return hook


def flat(arrays):
    return np.concatenate([a.numpy().ravel() for a in arrays.values()])


@pytest.fixture(scope="module")
def plain(small_fed):
    return {
        "fedavg": run_protocol(small_fed, fedavg.run, "fedavg")[0],
        "cwt": run_protocol(small_fed, cwt.run, "cwt")[0],
        "fedavg-1": run_protocol(small_fed, fedavg.run, "fedavg", rounds=1)[0],
    }


def observer(seen):
    def hook(msg, reply):
        seen.append(reply)
        return reply

    return hook


@pytest.mark.parametrize(
    "privacy", [{"mechanism": "he-ckks"}, {"mechanism": "he-paillier", "key_bits": 1024}, {"mechanism": "he-stream"}]
)
def test_he_fedavg_gives_fedavg_model_and_coordinator_sees_only_ciphertexts(small_fed, plain, privacy):
    seen = []
    one_round = run_protocol(small_fed, he_fedavg.run, "he-fedavg", privacy, rounds=1)[0]
    # one aggregation: within the quantisation step (Paillier 3.8e-6/2 per site) or CKKS noise (~1e-5)
    assert np.abs(flat(one_round) - flat(plain["fedavg-1"])).max() < 2e-5
    model, ctx, out, mech = run_protocol(small_fed, he_fedavg.run, "he-fedavg", privacy, fault=observer(seen))
    assert mech.report()["security_bits"] == mech.keyring.security_bits >= 80  # stated from the parameters
    # the coordinator derives the same level from the public material alone (a deployed one holds no keyring)
    assert out.measured["privacy"]["security_bits"] == mech.keyring.security_bits
    spec = model_spec(RunConfig(), small_fed)
    test = small_fed.pooled("test")
    acc = evaluate_predictor(spec, model, test)["accuracy"]
    assert abs(acc - evaluate_predictor(spec, plain["fedavg"], test)["accuracy"]) < 0.005  # quantisation: < 0.5 points
    assert seen and all(not r.content.array_records for r in seen)  # no plaintext weights ever reach the coordinator
    train_replies = [r for r in seen if "he" in r.content.config_records]
    assert len(train_replies) == 2 * len(small_fed.sites)
    assert isinstance(out.predictor, ArrayRecord) and list(out.predictor.keys()) == ["privmed-sealed"]
    assert out.measured["communication"]["expansion_factor"] > 1 and not ctx.rejections
    # 2 rounds, one of them decrypting (round 1 starts from the public weights; the last sum is the harness's)
    decrypted = sum(float(r.content["metrics"]["he-decrypt-s"]) for r in train_replies)
    assert out.measured["runtime"]["decrypt_seconds_per_round"] == pytest.approx(decrypted / 1)


def test_he_fedavg_excludes_truncated_and_foreign_ciphertexts_and_goes_on(small_fed, plain):
    def fault(msg, reply):
        node, rec = msg.metadata.dst_node_id, reply.content.config_records.get("he")
        if rec is not None and msg.metadata.group_id == "1" and node in (FIRST_NODE_ID, FIRST_NODE_ID + 1):
            ct = bytes(rec["ciphertext"])
            new = (
                {"ciphertext": ct[:-5], "key-id": rec["key-id"]}
                if node == FIRST_NODE_ID
                else {"ciphertext": ct, "key-id": "0" * 16}
            )
            reply.content["he"] = ConfigRecord(new)
        return reply

    model, ctx, _, _ = run_protocol(small_fed, he_fedavg.run, "he-fedavg", {"mechanism": "he-ckks"}, fault=fault)
    reasons = {r["node"]: r["reason"] for r in ctx.rejections}
    assert set(reasons) == {FIRST_NODE_ID, FIRST_NODE_ID + 1} and all(r["round"] == 1 for r in ctx.rejections)
    assert "parse" in reasons[FIRST_NODE_ID] and "another key" in reasons[FIRST_NODE_ID + 1]
    # FedAvg without the two refused sites' round-1 updates (within CKKS noise), not FedAvg of all four
    without = run_protocol(small_fed, fedavg.run, "fedavg", fault=dropping((1, FIRST_NODE_ID), (1, FIRST_NODE_ID + 1)))[
        0
    ]
    assert np.abs(flat(model) - flat(without)).max() < 5e-3
    assert not np.allclose(flat(model), flat(plain["fedavg"]), atol=1e-3)


def test_he_fedavg_refuses_to_start_when_a_site_misses_the_key_set_up(small_fed):
    silent = FIRST_NODE_ID + 2

    def drop_setup(msg, reply):
        return None if msg.metadata.group_id == "0" and msg.metadata.dst_node_id == silent else reply

    with pytest.raises(PrivmedError, match=f"no reply from site node\\(s\\) {silent};"):
        run_protocol(small_fed, he_fedavg.run, "he-fedavg", {"mechanism": "he-ckks"}, rounds=1, fault=drop_setup)


def test_he_site_refuses_to_encrypt_a_nan_update(small_fed):
    def poison(msg, context, call_next):
        reply = call_next(msg, context)
        if "arrays" in reply.content.array_records and msg.metadata.group_id == "1":
            arrays = reply.content["arrays"]
            first = next(iter(arrays))
            arrays[first] = type(arrays[first])(np.full(arrays[first].shape, np.nan, dtype=np.float32))
        return reply

    _, ctx, _, _ = run_protocol(
        small_fed, he_fedavg.run, "he-fedavg", {"mechanism": "he-ckks"}, rounds=1, site_mods={2: [poison]}
    )
    assert [r["node"] for r in ctx.rejections] == [FIRST_NODE_ID + 2]
    assert "NaN" in ctx.rejections[0]["reason"] and small_fed.sites[2].name in ctx.rejections[0]["reason"]


def test_encrypting_mechanisms_refuse_the_wrong_protocol_and_protocols_need_them(small_fed):
    with pytest.raises(
        PrivmedError, match="he-paillier encrypts FedAvg updates; use it with --protocol he-fedavg, not fedavg"
    ):
        resolve(RunConfig(protocol="fedavg", privacy={"mechanism": "he-paillier"}))
    with pytest.raises(
        PrivmedError, match="aes-gcm seals transmitted weights; use it with --protocol snt or fnt, not cwt"
    ):
        resolve(RunConfig(protocol="cwt", privacy={"mechanism": "aes-gcm"}))
    with pytest.raises(PrivmedError, match="no HE keys"):
        run_protocol(small_fed, he_fedavg.run, "he-fedavg")
    with pytest.raises(PrivmedError, match="unknown he-ckks parameter"):
        make_mechanism({"mechanism": "he-ckks", "bits": 3})


def test_secagg_fedavg_gives_fedavg_model_and_coordinator_sees_only_masked_vectors(small_fed, plain):
    seen = []
    model, ctx, _, _ = run_protocol(
        small_fed, secagg_fedavg.run, "secagg-fedavg", {"mechanism": "secagg"}, rounds=1, fault=observer(seen)
    )
    assert np.abs(flat(model) - flat(plain["fedavg-1"])).max() < 1e-3  # Flower's quantisation: clip 8, 2**22 levels
    assert all(
        all(len(rec) == 0 for rec in r.content.array_records.values()) for r in seen
    )  # weights cleared by secaggplus_mod
    assert not ctx.rejections


def test_secagg_survives_a_site_dropping_out_after_the_key_exchange(small_fed):
    dropped = FIRST_NODE_ID + 1

    def drop_masked_vector(msg, reply):
        stage = msg.content.config_records.get(RECORD_KEY_CONFIGS, {}).get(Key.STAGE) if not msg.has_error() else None
        return (
            None
            if (
                msg.metadata.dst_node_id == dropped
                and msg.metadata.group_id == "1"
                and stage == Stage.COLLECT_MASKED_VECTORS
            )
            else reply
        )

    def drop_train(msg, reply):
        return None if (msg.metadata.dst_node_id == dropped and msg.metadata.group_id == "1") else reply

    model, ctx, _, _ = run_protocol(
        small_fed,
        secagg_fedavg.run,
        "secagg-fedavg",
        {"mechanism": "secagg"},
        rounds=1,
        fault=drop_masked_vector,
        options={"threshold": 3},
    )
    reference = run_protocol(small_fed, fedavg.run, "fedavg", rounds=1, fault=drop_train)[0]
    assert [(r["round"], r["node"]) for r in ctx.rejections] == [(1, dropped)]
    assert np.abs(flat(model) - flat(reference)).max() < 1e-3  # the sum of the three others, masks removed


@pytest.mark.parametrize("fn,protocol", [(snt.run, "snt"), (fnt.run, "fnt")])
def test_snt_and_fnt_give_exactly_the_cwt_model_and_coordinator_sees_no_weights(small_fed, plain, fn, protocol):
    seen = []
    model, ctx, out, mech = run_protocol(small_fed, fn, protocol, {"mechanism": "aes-gcm"}, fault=observer(seen))
    assert np.array_equal(flat(model), flat(plain["cwt"]))
    assert all(not r.content.array_records for r in seen) and not ctx.rejections
    if protocol == "fnt":  # weights moved only on the peer links: every site sent to the next, each round
        assert (
            len(mech.links.bytes) == len(small_fed.sites)
            and max(r["bytes"] for r in ctx.grid.traffic.records if r["direction"] == "up") < 2000
        )
        assert out.measured["communication"]["peer_link_bytes"] == sum(mech.links.bytes.values())


def test_snt_tampered_blob_is_rejected_by_the_next_site_and_the_run_goes_on(small_fed):
    uploader, receiver = FIRST_NODE_ID + 1, FIRST_NODE_ID + 2
    evaluated = []
    model, ctx, _, _ = run_protocol(
        small_fed, snt.run, "snt", {"mechanism": "aes-gcm"}, fault=tampering(1, uploader), evaluated=evaluated
    )
    assert sorted((r["round"], r["node"]) for r in ctx.rejections) == [(1, uploader), (1, receiver)]
    for r in ctx.rejections:
        assert (
            "failed authentication" in r["reason"]
            and small_fed.sites[1].name in r["reason"]
            and small_fed.sites[2].name in r["reason"]
        )
    # both visits are lost: the model is CWT's without them, and so is round 1's evaluated model (the uploader
    # trained, its update was lost; the receiver could not open the blob, so it never trained: its optimiser's
    # state did not move)
    lost = {"fault": dropping((1, uploader)), "site_mods": {2: [failing(1)]}}
    reference_1 = run_protocol(small_fed, cwt.run, "cwt", rounds=1, **lost)[0]
    reference = run_protocol(small_fed, cwt.run, "cwt", **lost)[0]
    assert [r for r, _ in evaluated] == [1, 2] and np.array_equal(flat(evaluated[0][1]), flat(reference_1))
    assert np.array_equal(flat(model), flat(reference))


def test_snt_tampered_last_upload_of_a_round_is_caught_before_evaluation(small_fed):
    last = FIRST_NODE_ID + len(small_fed.sites) - 1
    evaluated = []
    model, ctx, _, _ = run_protocol(
        small_fed, snt.run, "snt", {"mechanism": "aes-gcm"}, fault=tampering(1, last), evaluated=evaluated
    )
    assert [(r["round"], r["node"]) for r in ctx.rejections] == [(1, last)]  # the run completed; the loss is recorded
    reason = ctx.rejections[0]["reason"]
    assert (
        "failed authentication" in reason and small_fed.sites[-1].name in reason and small_fed.sites[0].name in reason
    )
    reference_1 = run_protocol(small_fed, cwt.run, "cwt", rounds=1, fault=dropping((1, last)))[0]
    reference = run_protocol(small_fed, cwt.run, "cwt", fault=dropping((1, last)))[0]
    assert [r for r, _ in evaluated] == [1, 2] and np.array_equal(flat(evaluated[0][1]), flat(reference_1))
    assert np.array_equal(flat(model), flat(reference)) and np.array_equal(flat(evaluated[1][1]), flat(reference))


def test_snt_tampered_upload_of_the_last_round_is_not_the_final_model(small_fed):
    last = FIRST_NODE_ID + len(small_fed.sites) - 1
    model, ctx, _, _ = run_protocol(
        small_fed, snt.run, "snt", {"mechanism": "aes-gcm"}, rounds=1, fault=tampering(1, last)
    )
    assert [(r["round"], r["node"]) for r in ctx.rejections] == [(1, last)]
    assert np.array_equal(
        flat(model), flat(run_protocol(small_fed, cwt.run, "cwt", rounds=1, fault=dropping((1, last)))[0])
    )


@pytest.mark.parametrize(
    ("threshold", "why"),
    [
        (1, "whole number from 2 to 3 with 4 sites"),
        (4, "whole number from 2 to 3 with 4 sites"),
        (2.5, r"'threshold' for protocol secagg-fedavg must be int or none, got 2.5"),
        ("3", r"'threshold' for protocol secagg-fedavg must be int or none, got '3'"),
    ],
)
def test_secagg_threshold_must_be_a_whole_number_from_2_to_one_below_the_sites(small_fed, threshold, why):
    with pytest.raises(PrivmedError, match=why):
        run_protocol(
            small_fed,
            secagg_fedavg.run,
            "secagg-fedavg",
            {"mechanism": "secagg"},
            rounds=1,
            options={"threshold": threshold},
        )


def test_secagg_fedavg_without_the_secagg_mods_fails_loudly(small_fed):
    with pytest.raises(PrivmedError, match="--privacy secagg"):
        run_protocol(small_fed, secagg_fedavg.run, "secagg-fedavg", rounds=1)


def test_harness_measures_an_encrypted_run_and_saves_the_decrypted_model(small_fed, plain, tmp_path):
    from privmed.engine.result import load_predictor
    from privmed.run import execute

    result = execute(
        RunConfig(protocol="he-fedavg", privacy={"mechanism": "he-ckks"}, train=TrainSettings(rounds=2)), fed=small_fed
    )
    comm = result.communication
    assert comm["plaintext_float32_bytes"] == 4 * sum(a.numpy().size for a in plain["fedavg"].values())
    assert comm["expansion_factor"] == comm["ciphertext_bytes_per_site_per_round"] / comm["plaintext_float32_bytes"]
    assert 4 < comm["expansion_factor"] < 8  # CKKS N=4096, two 40-bit primes: ~6x float32 (README)
    assert result.privacy["mechanism"] == "he-ckks" and len(result.performance["history"]) == 2
    result.save(tmp_path)
    saved = load_predictor(tmp_path)
    assert set(saved.keys()) == set(plain["fedavg"].keys())  # weights, not ciphertext
    assert np.abs(flat(saved) - flat(plain["fedavg"])).max() < 5e-3


def replaying(node, rnd, *, from_round, holder):
    """A relay that keeps the blob ``node`` uploads in ``from_round`` and passes it off as its upload in ``rnd``."""

    def hook(msg, reply):
        if msg.metadata.dst_node_id == node and msg.metadata.message_type == "train":
            if msg.metadata.group_id == str(from_round):
                holder["blob"] = bytes(reply.content["sealed"]["blob"])
            elif msg.metadata.group_id == str(rnd):
                reply.content["sealed"] = ConfigRecord({"blob": holder["blob"]})
        return reply

    return hook


@pytest.mark.parametrize(
    ("from_round", "rnd", "why"),
    [(1, 2, "were trained from before: replayed blob refused"), (1, 3, "replayed or reordered blob refused")],
)
def test_snt_sites_refuse_a_replayed_or_reordered_blob_and_name_it(small_fed, from_round, rnd, why):
    """An active relay re-sends a site's older blob: the next site refuses it, the run rolls back and goes on."""
    uploader, receiver = FIRST_NODE_ID, FIRST_NODE_ID + 1
    hook = replaying(uploader, rnd, from_round=from_round, holder={})
    model, ctx, _, _ = run_protocol(small_fed, snt.run, "snt", {"mechanism": "aes-gcm"}, rounds=3, fault=hook)
    refused = [r for r in ctx.rejections if r["node"] == receiver]
    assert refused and why in refused[0]["reason"] and "'site-0'" in refused[0]["reason"], ctx.rejections
    assert (rnd, uploader) in {(r["round"], r["node"]) for r in ctx.rejections}  # its lost update is named too
    assert np.isfinite(flat(model)).all() and not np.allclose(flat(model), flat(ctx.initial))  # it trained on


def test_every_message_the_coordinator_receives_holds_only_what_its_threat_matrix_lists(small_fed):
    """No plaintext side channel: under HE, SecAgg+, SNT and FNT the coordinator gets ciphertext, masked vectors,
    blobs or schedule replies, plus only the values each protocol's matrix names (sizes, timings)."""
    allowed_metrics = {"he-fedavg": {"he-encrypt-s", "he-decrypt-s"}, "secagg-fedavg": {"num_examples"}}
    for protocol, privacy in [
        ("he-fedavg", {"mechanism": "he-ckks"}),
        ("secagg-fedavg", {"mechanism": "secagg"}),
        ("snt", {"mechanism": "aes-gcm"}),
        ("fnt", {"mechanism": "aes-gcm"}),
    ]:
        seen = []
        run_protocol(small_fed, PROTOCOLS[protocol].run, protocol, privacy, rounds=1, fault=observer(seen))
        assert seen
        for reply in seen:
            assert all(len(rec) == 0 for rec in reply.content.array_records.values()), protocol  # no plaintext weights
            for rec in reply.content.metric_records.values():
                assert set(rec) <= allowed_metrics.get(protocol, set()), (protocol, dict(rec))
                if protocol == "secagg-fedavg":
                    assert dict(rec) == {"num_examples": 1}  # scrubbed: the real count travels inside the mask
            for name, rec in reply.content.config_records.items():
                assert "train_loss" not in rec and "num-examples" not in rec or name == "he-public", (protocol, name)
                if name == "fitres.metrics":
                    assert len(rec) == 0
