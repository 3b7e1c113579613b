"""Sites that serve their own files, and a coordinator that only asks them what they hold (no servers).

The deployment's own ClientApp runs on a stand-in SuperLink (tests/engine/test_site_grid.py) whose nodes are
told only their own MedMNIST-format file (node config ``data``), each in its own folder; the coordinator's
run config names none of them. tests/engine/test_deployment.py runs the same on real SuperNodes with TLS.
"""

import numpy as np
import pytest

import privmed.data.registry
import privmed.engine.session
from privmed.config import from_dict, replace
from privmed.engine.deploy import client_app, run_config_of, serve
from privmed.errors import PrivmedError
from tests.engine.test_site_grid import SuperLinkLike

# the run asks for 32x32 phantom images: what the sites hold (16x16 files) can only come from the sites
CONFIG = from_dict(
    {"seed": 3, "data": {"sites": 3, "image_size": 32}, "train": {"rounds": 1, "lr": 0.01, "batch_size": 16}}
)
SIZES = {"ward-a": (24, 6, 8), "ward-b": (40, 8, 10), "ward-c": (16, 4, 6)}  # train, val, test images


def write_npz(path, sizes, *, side=16, seed=0):
    """A MedMNIST-format file: uint8 grey images [N, side, side], labels [N, 1] of both classes in every split."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes):
        labels = np.arange(n) % 2
        images = rng.integers(0, 60, (n, side, side)) + 120 * labels[:, None, None]  # the class is visible
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images.astype(np.uint8), labels[:, None]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def ward_files(root, sizes=SIZES, sides=None):
    """Each ward's file in its own folder (``root/<ward>/``), as each hospital holds its own."""
    sides = sides or {}
    return {
        w: write_npz(root / w / f"{w}.npz", s, side=sides.get(w, 16), seed=k) for k, (w, s) in enumerate(sizes.items())
    }


def wards_superlink(config, files, node_ids=(71, 5, 333)):
    return SuperLinkLike(
        {n: client_app for n in node_ids},
        run_config=run_config_of(config),
        node_configs={n: {"site-name": w, "data": f"medmnist:{p}"} for n, (w, p) in zip(node_ids, files.items())},
    )


@pytest.fixture
def no_phantom(monkeypatch):
    """Building a generated federation anywhere (coordinator or site) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a phantom federation was built")

    monkeypatch.setattr(privmed.engine.session, "build_federation", refuse)
    monkeypatch.setattr(privmed.data.registry, "load_federation", refuse)


@pytest.mark.parametrize("protocol", ["fedavg", "cwt"])
def test_sites_serve_their_own_files_and_the_coordinator_learns_only_their_description(tmp_path, no_phantom, protocol):
    config = replace(CONFIG, protocol=protocol)
    files = ward_files(tmp_path)
    assert not any(str(p) in str(run_config_of(config)) for p in files.values())  # the coordinator's only input
    result = serve(wards_superlink(config, files), config, wait_nodes_s=5, reply_timeout_s=60)

    assert result.reliability["sites"] == sorted(SIZES) and not result.reliability["rejected_updates"]
    assert result.dataset["image_shape"] == [1, 16, 16] and result.dataset["n_classes"] == 2
    got = {d["site"]: tuple(d["images"].values()) for d in result.dataset["distribution"]}
    assert got == SIZES
    assert all("labels_train" not in d for d in result.dataset["distribution"])  # sizes only
    evaluation = result.performance["evaluation"]
    assert evaluation["test_images"] == sum(s[2] for s in SIZES.values())  # each site measured its own test split
    assert set(result.performance["per_site"]) == set(SIZES)


def test_a_site_whose_images_differ_is_refused_by_name(tmp_path, no_phantom):
    files = ward_files(tmp_path, sides={"ward-b": 20})
    with pytest.raises(
        PrivmedError, match=r"disagree on the image shape: site ward-b has 1x20x20, the other sites 1x16x16"
    ):
        serve(wards_superlink(CONFIG, files), CONFIG, wait_nodes_s=5, reply_timeout_s=60)


def test_a_site_that_cannot_read_its_file_is_named(tmp_path, no_phantom):
    files = ward_files(tmp_path)
    files["ward-c"].write_bytes(b"not a zip")
    with pytest.raises(PrivmedError, match=r"site ward-c did not describe its data: site error: .*ward-c.npz"):
        serve(wards_superlink(CONFIG, files), CONFIG, wait_nodes_s=5, reply_timeout_s=60)
