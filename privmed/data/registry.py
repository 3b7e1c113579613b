"""Data set names a user can type: ``phantom`` (``phantom:v1`` for the pre-v2 phantom) or ``medmnist:<path to .npz>``."""

from __future__ import annotations

from privmed.data.base import Dataset
from privmed.errors import PrivmedError, unknown_name

DATASETS = ("phantom", "medmnist")


def load_dataset(spec: str, *, seed: int, n_sites: int = 4, image_size: int = 32, n_classes: int = 2,
                 shared_patient_fraction: float = 0.0, patients_scale: int = 1) -> Dataset:
    name, _, arg = spec.partition(":")
    if name == "phantom":
        from privmed.data.phantom import (
            PhantomConfig,
            default_sizes,
            make_phantom,
            parse_version,
        )

        sizes = tuple(patients_scale * n for n in default_sizes(n_sites))
        return make_phantom(PhantomConfig(n_sites=n_sites, image_size=image_size, n_classes=n_classes, patients_per_site=sizes,
                                          shared_patient_fraction=shared_patient_fraction, seed=seed, version=parse_version(arg)))
    if name == "medmnist":
        from privmed.data.medmnist import load_medmnist

        if not arg:
            raise PrivmedError("medmnist needs a path: --dataset medmnist:/path/to/file.npz")
        return load_medmnist(arg)
    raise unknown_name("dataset", name, DATASETS)
