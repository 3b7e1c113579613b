"""Partitioners: patient-aware, deterministic, skewed as asked, clear errors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privmed.data.partition import partition
from privmed.data.phantom import PhantomConfig, make_phantom
from privmed.errors import PrivmedError

DS = make_phantom(
    PhantomConfig(n_sites=4, patients_per_site=(20, 15, 12, 8), images_per_patient=2, image_size=16, seed=0)
)


def patient_sets(fed):
    return [{part: set(getattr(s, part).patient_ids) for part in ("train", "val", "test")} for s in fed.sites]


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    split=st.sampled_from(["iid", "dirichlet:0.3", "dirichlet:5", "quantity:0.5", "natural"]),
    n_sites=st.integers(2, 6),
)
def test_a_patient_never_straddles_sites_or_splits(seed, split, n_sites):
    if split == "natural":
        n_sites = 4
    fed = partition(DS, n_sites=n_sites, split=split, seed=seed)
    sets = patient_sets(fed)
    for s in sets:
        assert not (s["train"] & s["val"]) and not (s["train"] & s["test"]) and not (s["val"] & s["test"])
        assert s["train"], "every site has training patients"
    everyone = [p for s in sets for part in s.values() for p in part]
    assert len(everyone) == len(set(everyone)), "a patient appears at two sites"
    assert sum(len(s.train) + len(s.val) + len(s.test) for s in fed.sites) == len(DS.data)


def test_same_seed_same_partition():
    a = partition(DS, n_sites=3, split="dirichlet:0.5", seed=4)
    b = partition(DS, n_sites=3, split="dirichlet:0.5", seed=4)
    assert patient_sets(a) == patient_sets(b)


def label_skew(fed):
    """Mean total-variation distance between each site's label mix and the global one."""
    glob = np.bincount(DS.data.labels, minlength=2) / len(DS.data)
    tv = []
    for s in fed.sites:
        labels = np.concatenate([s.train.labels, s.val.labels, s.test.labels])
        tv.append(0.5 * np.abs(np.bincount(labels, minlength=2) / len(labels) - glob).sum())
    return np.mean(tv)


def test_small_alpha_skews_labels_more_than_large_alpha():
    small = np.mean([label_skew(partition(DS, n_sites=4, split="dirichlet:0.1", seed=s)) for s in range(5)])
    large = np.mean([label_skew(partition(DS, n_sites=4, split="dirichlet:100", seed=s)) for s in range(5)])
    assert small > large + 0.1


def test_natural_split_keeps_each_scanners_images():
    fed = partition(DS, n_sites=4, split="natural", seed=0)
    for i, s in enumerate(fed.sites):
        ids = set(s.train.patient_ids) | set(s.val.patient_ids) | set(s.test.patient_ids)
        assert ids == set(DS.data.patient_ids[DS.site_of == i])


def test_shared_patients_keep_one_role_at_both_sites():
    ds = make_phantom(PhantomConfig(image_size=16, shared_patient_fraction=0.3, seed=0))
    fed = partition(ds, n_sites=4, split="natural", seed=0)
    role = {}
    for s in fed.sites:
        for part in ("train", "val", "test"):
            for p in set(getattr(s, part).patient_ids):
                assert role.setdefault(p, part) == part


@pytest.mark.parametrize(
    "split,n_sites,match",
    [
        ("bananas", 4, "valid splits"),
        ("dirichlet:0", 4, "positive"),
        ("dirichlet", 4, "needs"),
        ("dirichlet:x", 4, "not a number"),
        ("iid:3", 4, "no parameter"),
        ("iid", 500, "patients"),
        ("natural", 3, "natural"),
    ],
)
def test_impossible_partitions_are_user_errors(split, n_sites, match):
    with pytest.raises(PrivmedError, match=match):
        partition(DS, n_sites=n_sites, split=split, seed=0)
