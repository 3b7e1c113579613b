"""Split learning (Jeon et al. 2019): what travels, that it trains the same network, NoPeek, and the audit's attacks."""

import numpy as np
import pytest
import torch

from privmed.config import RunConfig
from privmed.engine.session import assemble
from privmed.errors import PrivmedError
from privmed.protocols.base import TrainSettings
from privmed.protocols.split import SplitOptions, client_forward, cnn_from_state, distance_correlation
from privmed.run import execute
from tests.privacy.conftest import make_fed

TRAIN = TrainSettings(rounds=1, batch_size=4, lr=0.01)


def _split(options=None, rounds=1, fed=None):
    """A split session on a 2-site toy federation; returns (session, what went down, what came up)."""
    seen: list = []

    def hook(msg, reply):
        seen.append((msg, reply))
        return reply

    cfg = RunConfig(protocol="split", options=options or {}, train=TrainSettings(rounds=rounds, batch_size=4, lr=0.01))
    session = assemble(cfg, fed=fed or make_fed(n_sites=2, patients=6), fault=hook)
    out = session.protocol.run(session.ctx)
    return session, out, seen


def test_only_activations_labels_cut_gradients_and_the_client_layer_travel():
    session, out, seen = _split({"batches_per_message": 2})
    up = {k for _, reply in seen for k in reply.content.array_records}
    down = {k for msg, _ in seen for k in msg.content.array_records}
    assert up == {"acts", "labels", "client"} and down == {"client", "grad"}
    for msg, reply in seen:
        for rec in (*msg.content.array_records.values(), *reply.content.array_records.values()):
            assert not any(k.startswith(("features.1", "features.2", "head")) for k in rec), "server part left it"
        if "acts" in reply.content.array_records:  # the first block's output: 16 channels at half the size
            acts = reply.content["acts"]["values"].numpy()
            assert acts.shape[1:] == (16, 4, 4) and len(acts) == reply.content["labels"]["y"].numpy().size
    # six training images per patient pair -> 12 images, batches of 4 -> 3 mini-batches, 2 per message:
    # start + 2 gradient messages per visit, 2 sites
    assert len(seen) == 2 * 3
    steps = out.measured["runtime"]["split"]
    assert steps["site_steps"] == steps["server_steps"] == 2 * 3  # one step per mini-batch on each side
    assert out.measured["budget"]["sample_gradients"] == 2 * 12  # every training image once (one epoch)
    initial, final = session.ctx.initial.to_torch_state_dict(), out.predictor.to_torch_state_dict()
    assert not torch.equal(initial["features.0.0.weight"], final["features.0.0.weight"])  # the sites trained
    assert not torch.equal(initial["head.2.weight"], final["head.2.weight"])  # the coordinator trained


def test_ushaped_keeps_labels_and_head_at_the_site():
    _, _, seen = _split({"ushaped": 1})
    up = {k for _, reply in seen for k in reply.content.array_records}
    assert "labels" not in up and up == {"acts", "grad_out", "client"}
    client = next(reply.content["client"] for _, reply in seen if "client" in reply.content.array_records)
    assert {k.split(".")[0] for k in client} == {"features", "head"}


@pytest.mark.parametrize("options", [{"batches_per_message": 1}, {"batches_per_message": 1, "ushaped": 1}])
def test_one_mini_batch_per_message_trains_exactly_the_network_a_site_alone_trains(options):
    """Cut or not, the same Adam steps on the same batches: split learning computes the full network's gradient."""
    fed = make_fed(n_sites=1, patients=8)
    cwt = execute(RunConfig(protocol="cwt", train=TRAIN), fed=fed)
    result = execute(RunConfig(protocol="split", options=options, train=TRAIN), fed=fed)
    assert result.performance["budget"] == cwt.performance["budget"]  # equal compute, as each side counted it
    whole, split = cwt.predictor.to_torch_state_dict(), result.predictor.to_torch_state_dict()
    assert max(float((whole[k] - split[k]).abs().max()) for k in whole) < 1e-5
    # batching 8 mini-batches per message makes the site's gradients stale: close, not equal
    batched = execute(RunConfig(protocol="split", train=TRAIN), fed=fed).predictor.to_torch_state_dict()
    assert 0 < max(float((whole[k] - batched[k]).abs().max()) for k in whole) < 0.2


def test_nopeek_lowers_the_distance_correlation_of_the_activations():
    fed = make_fed(n_sites=2, patients=8)
    x = torch.from_numpy(np.concatenate([s.train.images for s in fed.sites]))
    train = TrainSettings(rounds=5, batch_size=8, lr=0.05)
    dcor = {}
    for lam in (0.0, 20.0):
        result = execute(RunConfig(protocol="split", options={"nopeek": lam}, train=train), fed=fed)
        model = cnn_from_state(result.predictor.to_torch_state_dict())
        with torch.no_grad():
            dcor[lam] = float(distance_correlation(x, client_forward(model, x, 1)))
    assert dcor[20.0] < dcor[0.0] - 0.05, dcor


def test_bad_options_and_networks_are_refused_with_the_valid_values():
    with pytest.raises(PrivmedError, match="cut must be 1 or 2"):
        SplitOptions(cut=3)
    with pytest.raises(PrivmedError, match="ushaped must be 0 .* or 1"):
        SplitOptions(ushaped=2)
    with pytest.raises(PrivmedError, match="use --model cnn"):
        execute(RunConfig(protocol="split", model="densenet121", train=TRAIN), fed=make_fed(n_sites=1))


def test_the_audit_reconstructs_site_images_and_labels_from_the_coordinators_view(small_fed):
    """Decoder and white box beat the flat-guess null; dCor is the dcor package's; U-shape labels leak by norm."""
    import dcor

    from privmed.attacks.harness import Target, measure_activation_inversion
    from privmed.engine.session import model_spec

    cfg = RunConfig(protocol="split", options={"ushaped": 1}, train=TrainSettings(rounds=1, batch_size=8, lr=0.01))
    result = execute(cfg, fed=small_fed)
    target = Target(cfg, small_fed, model_spec(cfg, small_fed), result.predictor)
    out = measure_activation_inversion(target, steps=150, iterations=100)
    flat = out["decoder"]["psnr_flat_guess"]
    assert out["decoder"]["psnr"] > flat + 5 and out["whitebox"]["psnr"] > flat + 5, out
    assert out["positive_control"]["psnr"] > flat + 5
    d = out["distance_correlation"]
    assert d["dcor"] > d["dcor_null_shuffled_pairs"] and d["dcor_positive_control_input_itself"] == pytest.approx(1)
    assert out["label_leakage"]["positive_control_label_from_logit_gradient"] == 1.0
    assert out["label_leakage"]["auc"] > 0.9  # the U-shape's returned gradient norms give the labels away
    # NoPeek's differentiable dCor is the package's estimate
    x, a = torch.rand(12, 1, 4, 4), torch.rand(12, 8)
    assert float(distance_correlation(x, a)) == pytest.approx(
        dcor.distance_correlation(x.flatten(1).double().numpy(), a.double().numpy()), abs=1e-6
    )
