"""Shared fixtures: a small phantom federation, built once per session."""

import pytest
import torch

torch.set_num_threads(1)  # see privmed.run.set_threads: small nets, shared 2-core machines


@pytest.fixture(scope="session")
def small_fed():
    """4 sites, few patients: enough for protocol mechanics, fast on CPU."""
    from privmed.data.partition import partition
    from privmed.data.phantom import PhantomConfig, make_phantom

    ds = make_phantom(
        PhantomConfig(n_sites=4, patients_per_site=(8, 6, 5, 4), images_per_patient=2, image_size=16, seed=3)
    )
    return partition(ds, n_sites=4, split="natural", seed=3)


# Files whose tests mostly wait (on Flower servers, or on one long calibration training): run first, so that under
# `make test`'s pytest-xdist workers (--dist loadfile: a file's tests and its module fixtures stay on one worker)
# the other workers run the rest of the suite meanwhile instead of waiting on them at the end.
RUN_FIRST = ("tests/engine/test_deployment.py", "tests/test_run.py")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        path = item.nodeid.split("::")[0]
        return RUN_FIRST.index(path) if path in RUN_FIRST else len(RUN_FIRST)

    items.sort(key=rank)  # stable: the collection order within each group
