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

import numpy as np

from privmed.data.base import PatientMeta
from privmed.data.deid import QUASI_IDENTIFIERS, Generalisation, generalise

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
