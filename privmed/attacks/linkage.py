"""Linkage (re-identification) attack on released metadata.

Paper: Sweeney 2002, "k-anonymity: a model for protecting privacy" (the
Massachusetts hospital discharge data re-identified by joining ZIP code,
birth date and sex with a voter list). Threat model: the attacker holds the
released records (pseudonymised, possibly generalised) and an outside table
naming people with the same quasi-identifiers (here: a register of every
phantom patient plus people who are not in the data set), and knows the
public generalisation rule. A record is re-identified when exactly one
outside person matches it; the harness, which holds the releaser's key,
counts how many of those claims are right.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date as _date

import numpy as np

from privmed.data.base import PatientMeta
from privmed.data.deid import QUASI_IDENTIFIERS, Generalisation, generalise
from privmed.errors import PrivmedError

# Seed salt of the outside register's look-alike people: apart from other draws of the same seed
REGISTER_SALT = 19


def outside_table(patients: dict[str, PatientMeta], *, extra_people: int, seed: int) -> list[dict]:
    """A register (name -> exact quasi-identifiers): every patient plus ``extra_people`` look-alikes."""
    rng = np.random.default_rng([seed, REGISTER_SALT])
    rows = [
        {"name": f"person:{p.patient_id}", "age": p.age, "sex": p.sex, "date": p.acquisition_date, "site": p.site}
        for p in patients.values()
    ]
    metas = list(patients.values())
    for i in range(extra_people):
        like = metas[int(rng.integers(len(metas)))]
        y, m, d = like.acquisition_date.split("-")
        rows.append(
            {
                "name": f"person:X{i:05d}",
                "age": int(np.clip(like.age + rng.integers(-10, 11), 18, 95)),
                "sex": str(rng.choice(["F", "M"])),
                "date": f"{int(y) + int(rng.integers(-1, 2))}-{m}-{int(rng.integers(1, 29)):02d}",
                "site": int(rng.integers(max(p.site for p in metas) + 1)),
            }
        )
    return rows


def link(released: list[dict], outside: list[dict], g: Generalisation) -> dict[str, str]:
    """The attacker's claims: pseudonym -> outside name, where exactly one outside person matches."""
    index: dict[tuple, list[str]] = defaultdict(list)
    for row in outside:
        index[generalise(row["age"], row["sex"], row["date"], row["site"], g)].append(row["name"])
    claims = {}
    for r in released:
        names = index.get(tuple(r[q] for q in QUASI_IDENTIFIERS), [])
        if len(names) == 1:
            claims[r["pseudonym"]] = names[0]
    return claims


def reidentification_rate(claims: dict[str, str], key: dict[str, str]) -> dict[str, float]:
    """Harness side: the fraction of released records correctly re-identified, and the claims' precision."""
    correct = sum(1 for pseudo, name in claims.items() if name == f"person:{key[pseudo]}")
    return {
        "reidentified": correct / max(len(key), 1),
        "precision": correct / max(len(claims), 1),
        "records": float(len(key)),
    }


# --- A realistic attacker: a partial, noisy public register (El Emam's and ARX's risk models) -------------------

KNOWLEDGE = {  # what the attacker's register holds about a person, from least to most
    "sex, birth year": ("sex", "birth_year"),
    "+ region": ("sex", "birth_year", "region"),
    "+ visit week": ("sex", "birth_year", "region", "visit_week"),
}


@dataclass(frozen=True)
class RegisterConfig:
    """The attacker's public register and its errors.

    The population is the data set's patients plus ``population_factor - 1``
    times as many look-alike people who are not in it; the register lists a
    random ``coverage`` of that population (so most patients are absent from
    it); each listed person's birth year is off by one with probability
    ``year_error``, and the visit week is known only to ± ``week_error``
    weeks. Sites are grouped into ``regions`` (a register knows where people
    live, not which hospital scanned them).
    """

    coverage: float = 0.5
    population_factor: int = 5
    year_error: float = 0.2
    week_error: int = 1
    regions: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.coverage <= 1 or self.population_factor < 1 or self.regions < 1:
            raise PrivmedError("register needs 0 < coverage <= 1, population_factor >= 1 and regions >= 1")
        if not 0 <= self.year_error <= 1 or self.week_error < 0:
            raise PrivmedError("register needs 0 <= year_error <= 1 and week_error >= 0")


def population(patients: dict[str, PatientMeta], *, factor: int, seed: int) -> list[dict]:
    """Everyone who could be in the data set: its patients plus look-alikes (same fields as ``outside_table``)."""
    return outside_table(patients, extra_people=(factor - 1) * len(patients), seed=seed)


def _derived(row: dict, regions: int) -> dict:
    d = _date.fromisoformat(row["date"])
    return {
        "birth_year": d.year - int(row["age"]),
        "region": int(row["site"]) % regions,
        "visit_day": d.toordinal(),
    }


def public_register(people: list[dict], cfg: RegisterConfig) -> list[dict]:
    """The attacker's register: a ``coverage`` sample of ``people`` with noisy birth year and visit week."""
    rng = np.random.default_rng([cfg.seed, REGISTER_SALT, 1])
    keep = rng.permutation(len(people))[: int(round(cfg.coverage * len(people)))]
    out = []
    for i in np.sort(keep):
        row = people[int(i)]
        true = _derived(row, cfg.regions)
        out.append(
            {
                "name": row["name"],
                "sex": row["sex"],
                "birth_year": true["birth_year"] + int(rng.random() < cfg.year_error) * int(rng.choice([-1, 1])),
                "region": true["region"],
                "visit_day": true["visit_day"] + 7 * int(rng.integers(-cfg.week_error, cfg.week_error + 1)),
            }
        )
    return out


def _record_ranges(rec: dict) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """A released record's age interval and visit-day interval (None where the date is suppressed)."""
    lo, _, hi = str(rec["age"]).partition("-")
    ages = (int(lo), int(hi or lo))
    d = rec["date"]
    if d == "*":
        return ages, None
    if len(d) == 10:
        day = _date.fromisoformat(d).toordinal()
        return ages, (day, day)
    if len(d) == 7:
        y, m = int(d[:4]), int(d[5:7])
        first = _date(y, m, 1)
        nxt = _date(y + (m == 12), m % 12 + 1, 1)
        return ages, (first.toordinal(), nxt.toordinal() - 1)
    return ages, (_date(int(d), 1, 1).toordinal(), _date(int(d), 12, 31).toordinal())


def compatible(rec: dict, person: dict, knowledge: tuple[str, ...], cfg: RegisterConfig) -> bool:
    """Could register ``person`` be released record ``rec``, given what the attacker knows and its error bars?"""
    if rec["sex"] != person["sex"]:
        return False
    (a_lo, a_hi), days = _record_ranges(rec)
    if "visit_week" in knowledge:
        slack = 7 * cfg.week_error + 6
        p_lo, p_hi = person["visit_day"] - slack, person["visit_day"] + slack
        if days is not None and (p_hi < days[0] or p_lo > days[1]):
            return False
        days = (p_lo, p_hi) if days is None else (max(days[0], p_lo), min(days[1], p_hi))
    years = (2010, 2025) if days is None else (_date.fromordinal(days[0]).year, _date.fromordinal(days[1]).year)
    slack_y = 1 if cfg.year_error > 0 else 0  # the attacker knows its birth years may be off by one
    by = person["birth_year"]
    age_lo, age_hi = years[0] - by - 1 - slack_y, years[1] - by + slack_y  # age at the visit, birthday unknown
    if age_hi < a_lo or age_lo > a_hi:
        return False
    return not ("region" in knowledge and rec["site"] != "*" and int(rec["site"]) % cfg.regions != person["region"])


def link_register(
    released: list[dict], register: list[dict], knowledge: tuple[str, ...], cfg: RegisterConfig
) -> dict[str, str]:
    """Claims pseudonym -> register name where exactly one register person is compatible with the record."""
    by_sex: dict[str, list[dict]] = defaultdict(list)
    for person in register:
        by_sex[person["sex"]].append(person)
    claims = {}
    for rec in released:
        hits = [p["name"] for p in by_sex[rec["sex"]] if compatible(rec, p, knowledge, cfg)]
        if len(hits) == 1:
            claims[rec["pseudonym"]] = hits[0]
    return claims


def risk(released: list[dict], people: list[dict], g: Generalisation) -> dict[str, float]:
    """ARX's prosecutor and journalist re-identification risks of a release (Prasser et al.; El Emam 2013).

    Prosecutor: the attacker knows its target is in the data; a record's risk
    is 1 / (size of its equivalence class in the release). Journalist: it does
    not; the risk is 1 / (size of the matching class in the population).
    Reported as the average over records and the highest.
    """
    from collections import Counter

    key = tuple(QUASI_IDENTIFIERS)
    sample = Counter(tuple(r[q] for q in key) for r in released)
    pop = Counter(generalise(p["age"], p["sex"], p["date"], p["site"], g) for p in people)
    pros = np.array([1 / sample[tuple(r[q] for q in key)] for r in released])
    jour = np.array([1 / max(pop[tuple(r[q] for q in key)], 1) for r in released])
    return {
        "prosecutor_risk_avg": float(pros.mean()) if len(pros) else float("nan"),
        "prosecutor_risk_max": float(pros.max()) if len(pros) else float("nan"),
        "journalist_risk_avg": float(jour.mean()) if len(jour) else float("nan"),
        "journalist_risk_max": float(jour.max()) if len(jour) else float("nan"),
    }
