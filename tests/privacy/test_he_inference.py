"""HE-CLSTM: phantom follow-up sequences, and CKKS-encrypted inference that agrees with plaintext inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privmed.data.phantom import PhantomConfig, make_phantom, make_phantom_test
from privmed.data.registry import phantom_config
from privmed.errors import PrivmedError
from privmed.models import HECLSTM
from privmed.privacy import he_inference

torch.set_num_threads(1)


def _config(**kw) -> PhantomConfig:
    base = dict(n_sites=1, image_size=16, patients_per_site=(8,), test_patients_per_site=(6,), sequence=3, seed=0)
    return PhantomConfig(**{**base, **kw})


def test_sequences_carry_progression_labels():
    data = make_phantom(_config()).data
    assert data.images.shape[1:] == (3, 16, 16)
    lesion = data.masks.reshape(len(data), 3, -1).any(-1)  # [N, visits]: lesion visible at each visit
    for label, visits in zip(data.labels, lesion):
        if label:  # progression: none at the first visit, present at the last
            assert not visits[0] and visits[-1]
        else:  # stable: the same at every visit (absent, or present from the start)
            assert visits.all() or not visits.any()
    stable_lesion = [v.all() for lab, v in zip(data.labels, lesion) if not lab]
    assert any(stable_lesion) or len(stable_lesion) < 4  # a lesion alone does not mean progression
    assert set(data.labels.tolist()) == {0, 1}


def test_sequence_option_is_checked():
    assert phantom_config("v2", **_kw(), options={"sequence": "4"}).sequence == 4
    with pytest.raises(PrivmedError, match="sequence must be"):
        phantom_config("v2", **_kw(), options={"sequence": "1"})
    with pytest.raises(PrivmedError, match="2-D, 2-class v2"):
        phantom_config("v1", **_kw(), options={"sequence": "4"})


def _kw() -> dict:
    return dict(seed=0, n_sites=4, image_size=16, n_classes=2, shared_patient_fraction=0.0, patients_scale=1)


def test_encrypted_and_plaintext_predictions_agree():
    train, test = make_phantom(_config(sequence=2)).data, make_phantom_test(_config(sequence=2)).data
    torch.manual_seed(0)
    model = HECLSTM(2, 2, channels=2, hidden=2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.from_numpy(train.images), torch.from_numpy(train.labels)
    for _ in range(20):  # a few steps, so that the weights are not the initial ones
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    out = he_inference.evaluate(model, test.images, test.labels, limit=5)
    assert out["identical_decisions"] >= 0.99
    assert out["max_abs_error"] < 1e-3
    logits = np.array(out["plaintext_logits"])
    assert np.ptp(logits[:, 1] - logits[:, 0]) > 10 * out["max_abs_error"]  # the scores differ between sequences
    # SEAL has no bootstrapping: the depth runs out and the client refreshes, which is counted and reported
    assert out["refresh_rounds_per_sequence"] >= 1 and 0 < out["max_levels_used"] <= he_inference.LEVELS
    assert out["bytes_up_per_sequence"] > 0 and out["bytes_down_per_sequence"] > 0


def test_server_context_has_no_secret_key():
    client = he_inference.Client(kernel=4, stride=2)
    with pytest.raises(PrivmedError, match="secret key"):
        he_inference.Server(HECLSTM(2, 2), client.context.serialize(save_secret_key=True), image_size=16)


def test_infer_command_refuses_bad_input_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from privmed.cli import app

    res = CliRunner().invoke(app, ["infer", str(tmp_path / "missing"), "--he", "ckks"])
    assert res.exit_code == 2 and "does not exist" in res.output
    res = CliRunner().invoke(app, ["infer", str(tmp_path), "--he", "paillier"])
    assert res.exit_code == 2 and "valid: ckks" in res.output
