"""The MedMNIST loader on small files the test writes."""

import numpy as np
import pytest

from privmed.data.medmnist import load_medmnist
from privmed.data.partition import partition
from privmed.errors import PrivmedError


def write(path, n=(30, 6, 8), shape=(28, 28), classes=3, **override):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, k in zip(("train", "val", "test"), n):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(k, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, classes, size=(k, 1))
    arrays.update(override)
    np.savez(path, **arrays)
    return path


def test_loads_and_partitions(tmp_path):
    ds = load_medmnist(write(tmp_path / "pneumoniamnist.npz"))
    assert ds.data.images.shape == (44, 1, 28, 28) and ds.data.images.dtype == np.float32
    with np.load(tmp_path / "pneumoniamnist.npz") as raw:  # uint8 / 255, splits pooled in order
        pooled = np.concatenate([raw[f"{s}_images"] for s in ("train", "val", "test")])
    np.testing.assert_allclose(ds.data.images[:, 0], pooled / 255.0, rtol=1e-6)
    assert ds.n_classes == 3 and ds.site_of is None
    assert len(np.unique(ds.data.patient_ids)) == 44  # each image its own patient
    fed = partition(ds, n_sites=3, split="iid", seed=0)
    assert sum(len(s.train) + len(s.val) + len(s.test) for s in fed.sites) == 44


def test_colour_images_become_channels(tmp_path):
    ds = load_medmnist(write(tmp_path / "c.npz", shape=(28, 28, 3)))
    assert ds.data.images.shape[1:] == (3, 28, 28)


def test_missing_file_says_where_and_how(tmp_path):
    with pytest.raises(PrivmedError, match="nope.npz not found.*pip install medmnist"):
        load_medmnist(tmp_path / "nope.npz")


def test_malformed_files_name_the_file_and_the_problem(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(PrivmedError, match="junk.npz is not a readable"):
        load_medmnist(junk)
    with pytest.raises(PrivmedError, match="m.npz lacks train_labels.*test_labels"):
        p = tmp_path / "m.npz"
        np.savez(p, train_images=np.zeros((2, 4, 4), np.uint8))
        load_medmnist(p)
    with pytest.raises(PrivmedError, match="3 images but 2 labels"):
        load_medmnist(
            write(tmp_path / "n.npz", n=(3, 2, 2), val_labels=np.zeros((2, 1), int), train_labels=np.zeros((2, 1), int))
        )
    with pytest.raises(PrivmedError, match="natural"):
        partition(load_medmnist(write(tmp_path / "ok.npz")), n_sites=2, split="natural", seed=0)
