"""Phantom v1 stays reproducible: the same config and seed give the same bytes as before v2.

The digests were recorded from the generator as it was before phantom v2
(commit c95aff1), so old results can be regenerated exactly.
"""

import hashlib

import numpy as np
import pytest

from privmed.data.phantom import PhantomConfig, make_phantom

V1_DIGESTS = {
    "default": ({}, "3508c5cda6f6e77750705a0e6937a88d3112149d9de06b4745c54b54b1f506d2"),
    "small16": (
        {"n_sites": 3, "patients_per_site": (10, 8, 6), "images_per_patient": 3, "image_size": 16, "seed": 1},
        "24d4f91da4ce27baacf170a3bb8efb0c45ace00474e96145b332e7cf6d713801",
    ),
    "three_class": (
        {"n_classes": 3, "image_size": 16, "seed": 0},
        "b6632c1fe4f3f340ba0b476b6acd5b99f9bcd53b3345ac81e82dff71271ad908",
    ),
    "shared": (
        {"image_size": 16, "shared_patient_fraction": 0.2, "seed": 5},
        "6fa702c98025b4c5929e7142be8f4502c6e151a59ce985fba3f6b80e17d21901",
    ),
}


def digest(ds) -> str:
    """SHA-256 over images, labels, masks, sites, patient ids and quasi-identifiers."""
    h = hashlib.sha256()
    d = ds.data
    for a in (d.images, d.labels, d.masks, ds.site_of):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update("|".join(d.patient_ids.tolist()).encode())
    h.update(repr(sorted((k, v.age, v.sex, v.acquisition_date, v.site) for k, v in ds.patients.items())).encode())
    return h.hexdigest()


@pytest.mark.parametrize("name", list(V1_DIGESTS))
def test_v1_is_bit_identical_to_the_generator_before_v2(name):
    kwargs, expected = V1_DIGESTS[name]
    assert digest(make_phantom(PhantomConfig(**kwargs, version=1))) == expected
