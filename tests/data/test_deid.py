"""k-anonymity: the release's smallest quasi-identifier group has k records; linkage then fails."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privmed.attacks.linkage import link, outside_table, reidentification_rate
from privmed.data.base import PatientMeta
from privmed.data.deid import LEVELS, Generalisation, generalise, k_anonymise, k_of, release
from privmed.errors import PrivmedError


def cohort(n: int, seed: int) -> dict[str, PatientMeta]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return {
        f"P{i:04d}": PatientMeta(
            f"P{i:04d}",
            int(rng.integers(20, 90)),
            str(rng.choice(["F", "M"])),
            f"{int(rng.integers(2010, 2020))}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}",
            int(rng.integers(4)),
        )
        for i in range(n)
    }


def test_generalise_bands_and_dates():
    assert generalise(47, "F", "2016-05-02", 2, Generalisation(10, "month")) == ("40-49", "F", "2016-05", 2)
    assert generalise(47, "F", "2016-05-02", 2, Generalisation(20, "none", site=False)) == ("40-59", "F", "*", "*")


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 6), st.integers(0, 1000))
def test_k_anonymise_reaches_k(k, seed):
    records, key, _ = k_anonymise(cohort(120, seed), k=k, seed=seed)
    assert k_of(records) >= k and set(key) == {r["pseudonym"] for r in records}


def test_linkage_reidentifies_pseudonymised_records_and_not_k_anonymous_ones():
    patients = cohort(150, 0)
    outside = outside_table(patients, extra_people=300, seed=0)
    raw, key = release(patients, LEVELS[0], seed=0)
    assert reidentification_rate(link(raw, outside, LEVELS[0]), key)["reidentified"] > 0.9
    anon, akey, g = k_anonymise(patients, k=3, seed=0)
    # every released group has >= 3 records, each matched by its own register row: no unique match is possible
    assert reidentification_rate(link(anon, outside, g), akey)["reidentified"] == 0.0


def test_impossible_k_is_refused():
    with pytest.raises(PrivmedError, match="lower k"):
        k_anonymise(cohort(5, 0), k=50, seed=0)
