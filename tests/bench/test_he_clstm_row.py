"""The review suite's HE-CLSTM row: its config, and the columns its encrypted-inference figures fill."""

from types import SimpleNamespace

from privmed.bench.report import _performance, _privacy, _runtime
from privmed.bench.suite import review_suite
from privmed.privacy.he_inference import bench_encrypted_inference
from privmed.site import ModelSpec


def test_the_review_suite_trains_he_clstm_on_sequences():
    (cfg,) = [cfg for label, cfg in review_suite(rounds=1) if cfg.model == "he-clstm"]
    assert "sequence=" in cfg.data.dataset


def test_encrypted_inference_figures_reach_the_report_columns():
    r = {
        "performance": {
            "final": {"accuracy": 0.5, "auroc": 0.5, "balanced_accuracy": 0.5},
            "encrypted_inference": {"sequences": 10, "identical_decisions": 1.0, "max_abs_error": 2e-5},
        },
        "runtime": {
            "wall_seconds": 1.0,
            "cpu_seconds": 1.0,
            "encrypted_inference_seconds_per_sequence": 3.0,
            "plaintext_inference_seconds_per_sequence": 0.003,
        },
        "privacy": {
            "coordinator_sees": "pooled data",
            "leakage": "not measured",
            "encrypted_inference": "server sees CKKS ciphertexts only",
        },
    }
    assert "10 sequences: 100% identical decisions" in _performance(r)
    assert "encrypted inference 3.0 s/sequence (1,000x plaintext)" in _runtime(r, None)
    assert "server sees CKKS ciphertexts only" in _privacy(r)


def test_rows_of_other_models_get_no_encrypted_inference():
    result = SimpleNamespace(extra={}, performance={}, communication={}, runtime={}, privacy={})
    spec = ModelSpec("cnn", in_channels=1, n_classes=2, task="classification")
    bench_encrypted_inference(spec, None, None, result)
    assert result.extra == {} and result.runtime == {}
