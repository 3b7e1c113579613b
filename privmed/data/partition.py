"""Patient-aware partitioners: a data set into sites, each site into train/val/test.

Splits (the unit is always the patient, never the image):

- ``natural``: by the data set's own sites (scanner/hospital). A patient the
  phantom deliberately scanned at two sites appears at both, with each site's
  own images, and takes the same role (train/val/test) at both so that pooled
  evaluation never tests on a patient some site trained on.
- ``iid``: patients shuffled and dealt to sites, stratified by label.
- ``dirichlet:<alpha>``: label skew; per class, site shares ~ Dirichlet(alpha)
  (Hsu et al. 2019, "Measuring the effects of non-identical data distribution
  for federated visual classification"). Small alpha, strong skew.
- ``quantity:<beta>``: quantity skew; site sizes ~ Dirichlet(beta), labels iid.

Within a site, patients are split into train/val/test stratified by label,
and every site gets at least one training patient.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from privmed.data.base import ArraySet, Dataset, Federation, SiteData
from privmed.errors import PrivmedError, unknown_name

SPLITS = ("natural", "iid", "dirichlet", "quantity")
_PARAMETRISED = {"dirichlet": "alpha", "quantity": "beta"}
_MAX_REDRAWS = 100


def parse_split(split: str) -> tuple[str, float | None]:
    """``"dirichlet:0.5"`` -> ``("dirichlet", 0.5)``; ``"iid"`` -> ``("iid", None)``."""
    name, sep, arg = str(split).partition(":")
    name = name.strip()
    if name not in SPLITS:
        raise unknown_name("split", name, SPLITS)
    if name in _PARAMETRISED:
        pname = _PARAMETRISED[name]
        if not sep or not arg.strip():
            raise PrivmedError(f"split {split!r} needs a concentration {pname}: write e.g. '{name}:0.5'")
        try:
            value = float(arg)
        except ValueError:
            raise PrivmedError(f"split {split!r}: {pname} {arg!r} is not a number; write e.g. '{name}:0.5'") from None
        if not np.isfinite(value) or value <= 0:
            raise PrivmedError(
                f"split {split!r}: {pname} must be a positive number (small = more skew), e.g. '{name}:0.5'"
            )
        return name, value
    if sep:
        raise PrivmedError(f"split {split!r}: {name!r} takes no parameter; write '{name}'")
    return name, None


def partition(
    dataset: Dataset,
    *,
    n_sites: int,
    split: str,
    seed: int,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
) -> Federation:
    """Partition ``dataset`` into ``n_sites`` sites named ``site-0``, ``site-1``, ...; deterministic from ``seed``."""
    name, param = parse_split(split)
    if not isinstance(n_sites, (int, np.integer)) or n_sites < 1:
        raise PrivmedError(f"n_sites must be an integer >= 1, got {n_sites!r}")
    for what, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise PrivmedError(f"{what} must be in [0, 1), got {f}")
    if val_fraction + test_fraction >= 1.0:
        raise PrivmedError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction:g} leaves no patient for training; keep "
            "their sum below 1"
        )
    rng = np.random.default_rng([seed, 0xDA7A])
    data = dataset.data
    pids, first = np.unique(data.patient_ids, return_index=True)  # sorted ids: order-independent
    plabels = data.labels[first]

    if name == "natural":
        site_idx = _natural(dataset, n_sites)
    else:
        if n_sites > len(pids):
            raise PrivmedError(
                f"cannot split {len(pids)} patients into {n_sites} sites (each site needs a patient); use fewer "
                "sites or more patients"
            )
        assign = _ASSIGNERS[name](plabels, n_sites, param, rng)
        owner = dict(zip(pids, assign))
        img_site = np.array([owner[p] for p in data.patient_ids], dtype=np.int64)
        site_idx = [np.flatnonzero(img_site == s) for s in range(n_sites)]

    role = _roles(data, site_idx, val_fraction, test_fraction, rng)
    sites = []
    for s, idx in enumerate(site_idx):
        r = np.array([role[p] for p in data.patient_ids[idx]], dtype=np.int64)
        sites.append(
            SiteData(
                name=f"site-{s}",
                train=data.subset(idx[r == 0]),
                val=data.subset(idx[r == 1]),
                test=data.subset(idx[r == 2]),
            )
        )
    return Federation(
        dataset_name=dataset.name,
        n_classes=dataset.n_classes,
        image_shape=dataset.image_shape,
        split=split,
        sites=tuple(sites),
        patients=dict(dataset.patients),
    )


# --------------------------------------------------------------------------- sites


def _natural(dataset: Dataset, n_sites: int) -> list[np.ndarray]:
    if dataset.site_of is None:
        raise PrivmedError(
            f"data set {dataset.name!r} has no natural sites; use split 'iid', 'dirichlet:<alpha>' or 'quantity:<beta>'"
        )
    if n_sites != dataset.n_natural_sites:
        raise PrivmedError(
            f"split 'natural' gives {dataset.n_natural_sites} sites for data set {dataset.name!r}, "
            f"but {n_sites} were asked; use --sites {dataset.n_natural_sites} or another split"
        )
    site_idx = [np.flatnonzero(dataset.site_of == s) for s in range(n_sites)]
    empty = [s for s, idx in enumerate(site_idx) if len(idx) == 0]
    if empty:
        raise PrivmedError(f"natural site(s) {empty} of data set {dataset.name!r} hold no images; use another split")
    return site_idx


def _iid(labels: np.ndarray, n_sites: int, _: float | None, rng: np.random.Generator) -> np.ndarray:
    """Shuffle, group by label, deal round-robin: equal sizes and label mixes."""
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]
    assign = np.empty(len(labels), dtype=np.int64)
    assign[order] = (np.arange(len(labels)) + rng.integers(n_sites)) % n_sites
    return assign


def _dirichlet(labels: np.ndarray, n_sites: int, alpha: float | None, rng: np.random.Generator) -> np.ndarray:
    """Per class, site shares ~ Dirichlet(alpha); re-drawn until every site has a patient."""
    classes = np.unique(labels)
    for _ in range(_MAX_REDRAWS):
        assign = np.empty(len(labels), dtype=np.int64)
        for c in classes:
            members = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(n_sites, alpha))
            cuts = np.round(np.cumsum(shares)[:-1] * len(members)).astype(int)
            for s, part in enumerate(np.split(members, cuts)):
                assign[part] = s
        if len(np.unique(assign)) == n_sites:
            return assign
    return _fill_empty(assign, n_sites, rng)


def _quantity(labels: np.ndarray, n_sites: int, beta: float | None, rng: np.random.Generator) -> np.ndarray:
    """Site sizes ~ Dirichlet(beta); patients drawn at random (labels iid)."""
    n = len(labels)
    for _ in range(_MAX_REDRAWS):
        shares = rng.dirichlet(np.full(n_sites, beta))
        cuts = np.round(np.cumsum(shares)[:-1] * n).astype(int)
        assign = np.empty(n, dtype=np.int64)
        for s, part in enumerate(np.split(rng.permutation(n), cuts)):
            assign[part] = s
        if len(np.unique(assign)) == n_sites:
            return assign
    return _fill_empty(assign, n_sites, rng)


def _fill_empty(assign: np.ndarray, n_sites: int, rng: np.random.Generator) -> np.ndarray:
    """Deterministic fix-up: each empty site takes one patient from the largest site."""
    assign = assign.copy()
    for s in range(n_sites):
        if not np.any(assign == s):
            biggest = int(np.argmax(np.bincount(assign, minlength=n_sites)))
            assign[rng.choice(np.flatnonzero(assign == biggest))] = s
    return assign


_ASSIGNERS: dict[str, Callable[[np.ndarray, int, float | None, np.random.Generator], np.ndarray]] = {
    "iid": _iid,
    "dirichlet": _dirichlet,
    "quantity": _quantity,
}


# --------------------------------------------------------------------------- roles


def _split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(n_val, n_test) for ``n`` patients, leaving at least one for training."""
    n_test, n_val = int(round(test_fraction * n)), int(round(val_fraction * n))
    while n_test + n_val > n - 1:
        if n_val >= n_test and n_val > 0:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def _spread(n_items: int, k: int) -> np.ndarray:
    """``k`` positions spread evenly over ``range(n_items)`` (systematic sampling)."""
    return np.floor((np.arange(k) + 0.5) * n_items / k).astype(int) if k else np.array([], dtype=int)


def _roles(
    data: ArraySet, site_idx: list[np.ndarray], val_fraction: float, test_fraction: float, rng: np.random.Generator
) -> dict[str, int]:
    """Role of each patient: 0 train, 1 val, 2 test; stratified by label within each site.

    A patient held by several sites (phantom referrals under ``natural``) keeps
    the role the first site gave them.
    """
    role: dict[str, int] = {}
    for idx in site_idx:
        pids, first = np.unique(data.patient_ids[idx], return_index=True)
        labels = data.labels[idx][first]
        new = np.array([p not in role for p in pids], dtype=bool)
        # Patients already placed count toward this site's quotas.
        placed = [role[p] for p in pids[~new]]
        n_val, n_test = _split_counts(len(pids), val_fraction, test_fraction)
        n_val, n_test = max(0, n_val - placed.count(1)), max(0, n_test - placed.count(2))
        if not np.any(np.array(placed) == 0):  # this site still needs a training patient
            while n_val + n_test > int(new.sum()) - 1 and n_val + n_test > 0:
                if n_val >= n_test:
                    n_val -= 1
                else:
                    n_test -= 1
        if not new.any() and 0 not in placed:  # every patient here was placed as val/test elsewhere
            role[str(pids[0])] = 0
        free, free_labels = pids[new], labels[new]
        order = rng.permutation(len(free))
        order = order[np.argsort(free_labels[order], kind="stable")]  # label-sorted, random within label
        r = np.zeros(len(free), dtype=np.int64)
        n_val, n_test = min(n_val, len(free)), min(n_test, max(0, len(free) - n_val))
        test_pos = _spread(len(free), n_test)
        r[order[test_pos]] = 2
        rest = np.flatnonzero(r[order] == 0)
        r[order[rest[_spread(len(rest), n_val)]]] = 1
        role.update(zip(free.tolist(), r.tolist()))
    return role
