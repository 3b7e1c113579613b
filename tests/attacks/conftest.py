"""An easy two-class federation (left vs right half bright) on which small CNNs learn in a few steps."""

import numpy as np
import pytest

from privmed.data.base import ArraySet, Federation, SiteData


def easy_set(n: int, rng: np.random.Generator, tag: str, size: int = 16) -> ArraySet:
    y = rng.integers(0, 2, n)
    x = rng.uniform(0, 0.3, (n, 1, size, size)).astype(np.float32)
    half = size // 2
    x[y == 1, :, :, :half] += 0.5
    x[y == 0, :, :, half:] += 0.5
    return ArraySet(x, y.astype(np.int64), np.array([f"{tag}p{i // 2}" for i in range(n)]))


@pytest.fixture(scope="session")
def easy_fed() -> Federation:
    rng = np.random.default_rng(0)
    sites = tuple(
        SiteData(f"site-{i}", easy_set(24, rng, f"s{i}tr"), easy_set(4, rng, f"s{i}va"), easy_set(16, rng, f"s{i}te"))
        for i in range(4)
    )
    return Federation("easy", 2, (1, 16, 16), "iid", sites)
