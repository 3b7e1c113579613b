"""De-identification of patient metadata: pseudonyms, generalisation, k-anonymity.

Paper: Sweeney 2002, "k-anonymity: a model for protecting privacy" and
"Achieving k-anonymity privacy protection using generalization and
suppression" (Datafly-style full-domain generalisation of quasi-identifiers
along one hierarchy per attribute, then suppression of the records still in
groups smaller than k). Quasi-identifiers here are the phantom's
:class:`~privmed.data.base.PatientMeta` fields: age, sex, acquisition date,
site. Faithful: a release is k-anonymous when every combination of released
quasi-identifiers is shared by at least k records. Differs: the lattice is a
single chain of levels (coarser age bands and dates together, then the site
dropped) rather than Datafly's attribute-by-attribute greedy choice.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from privmed.data.base import PatientMeta
from privmed.errors import PrivmedError

QUASI_IDENTIFIERS = ("age", "sex", "date", "site")


# Seed salt of the release order (which pseudonym goes to whom): apart from other draws of the same seed
RELEASE_SALT = 17


@dataclass(frozen=True)
class Generalisation:
    """How coarsely each quasi-identifier is released (age band in years; date precision; site kept?)."""

    age_band: int = 1
    date: str = "day"  # day | month | year | none
    site: bool = True

    def __post_init__(self) -> None:
        if self.age_band < 1 or self.date not in ("day", "month", "year", "none"):
            raise PrivmedError("generalisation needs age_band >= 1 and date in day | month | year | none")


# Sweeney's lattice, walked as one chain from raw to coarse.
LEVELS = (
    Generalisation(1, "day"),
    Generalisation(5, "month"),
    Generalisation(10, "year"),
    Generalisation(20, "year"),
    Generalisation(20, "none"),
    Generalisation(20, "none", site=False),
    Generalisation(100, "none", site=False),
)


def generalise(age: int, sex: str, date: str, site: int, g: Generalisation) -> tuple:
    """One person's quasi-identifiers as released under ``g`` (the attacker applies the same public rule)."""
    lo = (int(age) // g.age_band) * g.age_band
    d = {"day": date, "month": date[:7], "year": date[:4], "none": "*"}[g.date]
    return (f"{lo}-{lo + g.age_band - 1}" if g.age_band > 1 else str(age), sex, d, site if g.site else "*")


def release(patients: dict[str, PatientMeta], g: Generalisation, *, seed: int) -> tuple[list[dict], dict[str, str]]:
    """Pseudonymised, generalised records and the key (pseudonym -> patient id) the releaser keeps."""
    rng = np.random.default_rng([seed, RELEASE_SALT])
    ids = sorted(patients)
    order = rng.permutation(len(ids))
    records, key = [], {}
    for n, i in enumerate(order):
        p = patients[ids[i]]
        pseudo = f"R{n:05d}"
        key[pseudo] = p.patient_id
        records.append(
            {
                "pseudonym": pseudo,
                **dict(zip(QUASI_IDENTIFIERS, generalise(p.age, p.sex, p.acquisition_date, p.site, g))),
            }
        )
    return records, key


def k_of(records: list[dict]) -> int:
    """The k the release achieves: the size of its smallest quasi-identifier group."""
    counts = Counter(tuple(r[q] for q in QUASI_IDENTIFIERS) for r in records)
    return min(counts.values()) if counts else 0


def k_anonymise(
    patients: dict[str, PatientMeta], *, k: int, seed: int, max_suppressed: float = 0.1
) -> tuple[list[dict], dict[str, str], Generalisation]:
    """The least generalisation on :data:`LEVELS` that, after suppressing at most ``max_suppressed`` of the records,
    is k-anonymous."""
    if k < 1:
        raise PrivmedError(f"k-anonymity needs k >= 1, got {k}")
    for g in LEVELS:
        records, key = release(patients, g, seed=seed)
        counts = Counter(tuple(r[q] for q in QUASI_IDENTIFIERS) for r in records)
        kept = [r for r in records if counts[tuple(r[q] for q in QUASI_IDENTIFIERS)] >= k]
        if len(records) - len(kept) <= max_suppressed * len(records) and kept:
            return kept, {r["pseudonym"]: key[r["pseudonym"]] for r in kept}, g
    raise PrivmedError(f"cannot reach {k}-anonymity for {len(patients)} patients even at the coarsest level; lower k")
