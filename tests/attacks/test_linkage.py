"""Linkage with a partial, noisy register: more knowledge re-identifies more, generalisation less; ARX risks."""

import pytest

from privmed.attacks import linkage
from privmed.data.deid import LEVELS, Generalisation, k_anonymise, release
from privmed.errors import PrivmedError
from tests.data.test_deid import cohort


@pytest.fixture(scope="module")
def world():
    patients = cohort(150, 0)
    cfg = linkage.RegisterConfig(coverage=0.6, seed=0)
    people = linkage.population(patients, factor=cfg.population_factor, seed=0)
    return patients, people, cfg, linkage.public_register(people, cfg)


def test_more_knowledge_reidentifies_more_and_the_exact_register_most(world):
    patients, people, cfg, register = world
    raw, key = release(patients, LEVELS[0], seed=0)
    rates = {
        name: linkage.reidentification_rate(linkage.link_register(raw, register, knows, cfg), key)["reidentified"]
        for name, knows in linkage.KNOWLEDGE.items()
    }
    exact = linkage.reidentification_rate(
        linkage.link(raw, linkage.outside_table(patients, extra_people=600, seed=0), LEVELS[0]), key
    )
    assert rates["sex, birth year"] < rates["+ visit week"] > 0.2
    assert exact["reidentified"] > rates["+ visit week"] + 0.2  # the positive control: the register misses people
    anon, akey, g = k_anonymise(patients, k=5, seed=0)
    k5 = linkage.reidentification_rate(
        linkage.link_register(anon, register, linkage.KNOWLEDGE["+ visit week"], cfg), akey
    )
    assert k5["reidentified"] < rates["+ visit week"] / 2


def test_register_noise_is_what_it_says(world):
    _, people, cfg, register = world
    assert len(register) == round(cfg.coverage * len(people))
    truth = {p["name"]: linkage._derived(p, cfg.regions) for p in people}
    year_off = [r["birth_year"] - truth[r["name"]]["birth_year"] for r in register]
    week_off = [(r["visit_day"] - truth[r["name"]]["visit_day"]) / 7 for r in register]
    assert set(year_off) <= {-1, 0, 1} and 0.1 < sum(y != 0 for y in year_off) / len(register) < 0.3  # 0.2 set
    assert set(week_off) == {-1, 0, 1}


def test_prosecutor_and_journalist_risk_closed_form():
    g = Generalisation(1, "day")
    rec = [
        {"pseudonym": "a", "age": "40", "sex": "F", "date": "2015-01-01", "site": 0},
        {"pseudonym": "b", "age": "40", "sex": "F", "date": "2015-01-01", "site": 0},
        {"pseudonym": "c", "age": "50", "sex": "M", "date": "2015-01-01", "site": 1},
    ]
    people = [{"age": 40, "sex": "F", "date": "2015-01-01", "site": 0}] * 4 + [
        {"age": 50, "sex": "M", "date": "2015-01-01", "site": 1}
    ]
    r = linkage.risk(rec, people, g)
    assert r["prosecutor_risk_avg"] == pytest.approx((0.5 + 0.5 + 1) / 3) and r["prosecutor_risk_max"] == 1
    assert r["journalist_risk_avg"] == pytest.approx((0.25 + 0.25 + 1) / 3) and r["journalist_risk_max"] == 1


def test_register_config_validation():
    with pytest.raises(PrivmedError, match="coverage"):
        linkage.RegisterConfig(coverage=0)
