"""The phantom: deterministic, patient-structured, multi-scanner (both versions); v2's held-out test patients.

The calibration figures (how hard v2 is) are in test_phantom_calibration.py;
v1's bytes are pinned in test_phantom_v1.py.
"""

import numpy as np
import pytest

from privmed.data import phantom_v2
from privmed.data.phantom import (
    PhantomConfig,
    make_phantom,
    make_phantom_test,
    phantom_federation,
)
from privmed.data.registry import load_dataset
from privmed.errors import PrivmedError

SMALL_ARGS = {"n_sites": 3, "patients_per_site": (10, 8, 6), "images_per_patient": 3, "image_size": 16, "seed": 1}


@pytest.fixture(scope="module", params=[1, 2], ids=["v1", "v2"])
def config(request):
    return PhantomConfig(**SMALL_ARGS, version=request.param)


@pytest.fixture(scope="module")
def small(config):
    return make_phantom(config)


def test_same_seed_same_arrays_other_seed_other_arrays(config, small):
    again = make_phantom(config)
    np.testing.assert_array_equal(small.data.images, again.data.images)
    np.testing.assert_array_equal(small.data.labels, again.data.labels)
    other = make_phantom(PhantomConfig(**{**config.to_dict(), "seed": 2}))
    assert not np.allclose(small.data.images, other.data.images)


def test_shapes_dtypes_and_metadata(config, small):
    d = small.data
    n = sum(config.patients_per_site) * config.images_per_patient
    assert d.images.shape == (n, 1, 16, 16) and d.images.dtype == np.float32
    assert d.labels.dtype == np.int64 and d.masks.shape == (n, 1, 16, 16)
    if config.version == 2:  # per-image normalisation: the 75th percentile at NORMAL_LEVEL, background at 0
        p1, p75 = np.percentile(d.images.reshape(n, -1), [1, 75], axis=1)
        assert np.allclose(p75, phantom_v2.NORMAL_LEVEL, atol=0.02) and np.allclose(p1, 0, atol=0.02)
    else:  # v1: a fixed output scale, so scanner differences survive: images are not normalised one by one
        assert np.ptp(np.percentile(d.images.reshape(n, -1), 75, axis=1)) > 0.05
    assert len(small.patients) == sum(config.patients_per_site)
    meta = next(iter(small.patients.values()))
    assert meta.sex in ("F", "M") and 18 <= meta.age <= 95 and len(meta.acquisition_date) == 10
    assert len(small.info["scanners"]) == 3


def test_a_patients_images_share_a_label_and_look_alike(small):
    d = small.data
    within, between = [], []
    ids = np.unique(d.patient_ids)
    for pid in ids:
        idx = np.flatnonzero(d.patient_ids == pid)
        assert len(set(d.labels[idx])) == 1
        a, b = d.images[idx[0]].ravel(), d.images[idx[1]].ravel()
        within.append(np.corrcoef(a, b)[0, 1])
    rng = np.random.default_rng(0)
    for _ in range(len(ids)):
        i, j = rng.choice(len(d.images), 2, replace=False)
        if d.patient_ids[i] != d.patient_ids[j]:
            between.append(np.corrcoef(d.images[i].ravel(), d.images[j].ravel())[0, 1])
    assert np.mean(within) > np.mean(between)


def test_masks_are_non_empty_exactly_when_there_is_a_lesion(small):
    d = small.data
    has_mask = d.masks.reshape(len(d.masks), -1).any(1)
    np.testing.assert_array_equal(has_mask, d.labels > 0)


@pytest.mark.parametrize("version", [1, 2])
def test_sites_differ_in_intensity_and_prevalence(version):
    ds = make_phantom(PhantomConfig(seed=0, image_size=16, version=version))
    means = [ds.data.images[ds.site_of == s].mean() for s in range(4)]
    prev = [ds.data.labels[ds.site_of == s].mean() for s in range(4)]
    assert max(means) - min(means) > 0.01
    assert max(prev) - min(prev) > 0.2
    sizes = [int((ds.site_of == s).sum()) for s in range(4)]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 2 * sizes[-1]


@pytest.mark.parametrize("version", [1, 2])
def test_three_class_option(version):
    ds = make_phantom(PhantomConfig(n_classes=3, image_size=16, seed=0, version=version))
    assert set(np.unique(ds.data.labels)) == {0, 1, 2}


@pytest.mark.parametrize("version", [1, 2])
def test_shared_patients_appear_at_two_sites_with_their_own_images(version):
    ds = make_phantom(PhantomConfig(image_size=16, shared_patient_fraction=0.2, seed=0, version=version))
    shared = ds.info["shared_patients"]
    assert len(shared) == round(0.2 * 150)
    pid, (home, second) = next(iter(shared.items()))
    at_home = ds.data.images[(ds.data.patient_ids == pid) & (ds.site_of == home)]
    at_second = ds.data.images[(ds.data.patient_ids == pid) & (ds.site_of == second)]
    assert len(at_home) and len(at_second) and home != second
    assert not np.allclose(at_home.mean(0), at_second.mean(0))


@pytest.mark.parametrize(
    "bad",
    [
        {"n_sites": 0},
        {"image_size": 8},
        {"n_classes": 5},
        {"patients_per_site": (3, 3)},
        {"prevalence": (1.5, 0.1, 0.1, 0.1)},
        {"shared_patient_fraction": 2.0},
        {"version": 3},
        {"test_patients_per_site": (5, 5)},
        {"version": 1, "test_patients_per_site": (5, 5, 5, 5)},
    ],
)
def test_invalid_configs_are_user_errors(bad):
    with pytest.raises(PrivmedError, match="invalid phantom config"):
        PhantomConfig(**bad)


# --------------------------------------------------------------------------- v2: held-out test patients


@pytest.fixture(scope="module")
def default_fed():
    return phantom_federation(PhantomConfig(), split="natural", seed=0)


def test_v2_is_the_default_and_v1_stays_reachable_by_name():
    assert PhantomConfig().version == 2
    v2 = load_dataset("phantom", seed=0, image_size=16)
    assert v2.info["config"]["version"] == 2 and v2.name == "phantom:v2"  # result.json says which phantom
    v1 = load_dataset("phantom:v1", seed=0, image_size=16)
    assert v1.name == "phantom"  # as every v1 result.json says
    np.testing.assert_array_equal(
        v1.data.images, make_phantom(PhantomConfig(image_size=16, seed=0, version=1)).data.images
    )
    with pytest.raises(PrivmedError, match="phantom:v1"):
        load_dataset("phantom:v7", seed=0)


def test_default_pooled_test_set_is_large_balanced_and_of_its_own_patients(default_fed):
    test = default_fed.pooled("test")
    assert len(test) >= 1000
    for site in default_fed.sites:
        assert abs(site.test.labels.mean() - 0.5) < 0.05  # balanced at every site: prevalence says nothing
        seen = set(site.train.patient_ids) | set(site.val.patient_ids)
        assert seen and not seen & set(site.test.patient_ids)
    train_ids = set(default_fed.pooled("train").patient_ids) | set(default_fed.pooled("val").patient_ids)
    assert not train_ids & set(test.patient_ids)
    assert set(test.patient_ids) | train_ids <= set(default_fed.patients)


def test_natural_split_keeps_held_out_patients_at_the_scanner_that_imaged_them():
    config = PhantomConfig(image_size=16, test_patients_per_site=(6, 4, 4, 2), seed=3)
    held_out = make_phantom_test(config)
    fed = phantom_federation(config, split="natural", seed=3)
    for s, site in enumerate(fed.sites):
        ids = held_out.data.patient_ids[held_out.site_of == s]
        assert sorted(site.test.patient_ids) == sorted(ids)
    assert len(set(held_out.patients) & set(make_phantom(config).patients)) == 0
    iid = phantom_federation(config, split="iid", seed=3, n_sites=2)
    assert len(iid.sites) == 2 and sorted(iid.pooled("test").patient_ids) == sorted(held_out.data.patient_ids)


def test_v2_lesions_are_not_the_brightest_structure(default_fed):
    """v1's failure mode: the image maximum or 90th percentile alone must not separate the classes."""
    from sklearn.metrics import roc_auc_score

    test = default_fed.pooled("test")
    flat = test.images.reshape(len(test), -1)
    for stat in (flat.max(1), np.percentile(flat, 90, axis=1)):
        assert 0.35 <= roc_auc_score(test.labels, stat) <= 0.65
