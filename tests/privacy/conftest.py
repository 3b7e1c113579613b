"""A tiny separable federation with several images per patient and one patient at two sites."""

import numpy as np
import pytest

from privmed.data.base import ArraySet, Federation, SiteData


def make_fed(n_sites: int = 3, patients: int = 6, images: int = 2, size: int = 8, seed: int = 0) -> Federation:
    rng = np.random.default_rng(seed)
    sites = []
    for s in range(n_sites):
        parts = {}
        for part, n_pat in (("train", patients), ("val", 2), ("test", 2)):
            ids = np.repeat([f"P{s}-{part}-{j}" for j in range(n_pat)], images)
            if part == "train" and s < 2:
                ids[:images] = "SHARED-0"  # the same patient scanned at sites 0 and 1
            labels = np.repeat(rng.integers(0, 2, n_pat), images).astype(np.int64)
            x = rng.normal(0, 1, (len(ids), 1, size, size)).astype(np.float32) + labels[:, None, None, None] * 1.5
            parts[part] = ArraySet(x.astype(np.float32), labels, ids.astype(str))
        sites.append(SiteData(f"site-{s}", parts["train"], parts["val"], parts["test"]))
    return Federation("toy", 2, (1, size, size), "natural", tuple(sites))


@pytest.fixture(scope="session")
def toy_fed() -> Federation:
    return make_fed()
