"""The phantom: deterministic, patient-structured, multi-scanner, calibrated."""

import numpy as np
import pytest

from privmed.data.phantom import PhantomConfig, make_phantom
from privmed.errors import PrivmedError

SMALL = PhantomConfig(n_sites=3, patients_per_site=(10, 8, 6), images_per_patient=3, image_size=16, seed=1)


@pytest.fixture(scope="module")
def small():
    return make_phantom(SMALL)


def test_same_seed_same_arrays_other_seed_other_arrays(small):
    again = make_phantom(SMALL)
    np.testing.assert_array_equal(small.data.images, again.data.images)
    np.testing.assert_array_equal(small.data.labels, again.data.labels)
    other = make_phantom(PhantomConfig(**{**SMALL.to_dict(), "seed": 2}))
    assert not np.allclose(small.data.images, other.data.images)


def test_shapes_dtypes_and_metadata(small):
    d = small.data
    n = sum(SMALL.patients_per_site) * SMALL.images_per_patient
    assert d.images.shape == (n, 1, 16, 16) and d.images.dtype == np.float32
    assert d.labels.dtype == np.int64 and d.masks.shape == (n, 1, 16, 16)
    assert 0.0 <= d.images.min() and d.images.max() <= 1.0
    assert len(small.patients) == sum(SMALL.patients_per_site)
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


def test_sites_differ_in_intensity_and_prevalence():
    ds = make_phantom(PhantomConfig(seed=0, image_size=16))
    means = [ds.data.images[ds.site_of == s].mean() for s in range(4)]
    prev = [ds.data.labels[ds.site_of == s].mean() for s in range(4)]
    assert max(means) - min(means) > 0.01
    assert max(prev) - min(prev) > 0.2
    sizes = [int((ds.site_of == s).sum()) for s in range(4)]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 2 * sizes[-1]


def test_three_class_option():
    ds = make_phantom(PhantomConfig(n_classes=3, image_size=16, seed=0))
    assert set(np.unique(ds.data.labels)) == {0, 1, 2}


def test_shared_patients_appear_at_two_sites_with_their_own_images():
    ds = make_phantom(PhantomConfig(image_size=16, shared_patient_fraction=0.2, seed=0))
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
    ],
)
def test_invalid_configs_are_user_errors(bad):
    with pytest.raises(PrivmedError, match="invalid phantom config"):
        PhantomConfig(**bad)
