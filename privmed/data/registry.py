"""Data set names a user can type.

- ``phantom``: privmed's multi-scanner phantom (2-D).
- ``medmnist:<path.npz>``: a MedMNIST file, 2-D or 3-D.
- ``dicom:<DIR>``: ``DIR/<patient>/<series>/*.dcm`` and ``DIR/labels.csv``.
- ``nifti:<DIR>``: ``DIR/<patient>/*.nii[.gz]`` and ``DIR/labels.csv``.
- ``folder:<CSV>``: 2-D images listed in a CSV (path, label, patient_id).

Volume sets load as 3-D [N, 1, D, H, W] (resized to ``image_size``³); the
option ``?slices=axial`` (e.g. ``dicom:DIR?slices=axial``) loads each volume's
axial slices as 2-D images instead, keeping the patient id (what the 2-D
networks train on). Layouts: README, "Your own data".
"""

from __future__ import annotations

from privmed.data.base import Dataset
from privmed.errors import PrivmedError, unknown_name

DATASETS = ("phantom", "medmnist", "dicom", "nifti", "folder")
OPTIONS = {"medmnist": ("slices",), "dicom": ("slices",), "nifti": ("slices",)}


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """``"dicom:/data/ct?slices=axial"`` -> ``("dicom", "/data/ct", {"slices": "axial"})``."""
    name, _, rest = spec.partition(":")
    arg, _, query = rest.partition("?")
    options = {}
    for item in filter(None, query.split("&")):
        key, sep, value = item.partition("=")
        if not sep or key not in OPTIONS.get(name, ()):
            valid = ", ".join(f"{k}=..." for k in OPTIONS.get(name, ())) or "none"
            raise PrivmedError(f"data set option {item!r} is not valid for {name}; valid options: {valid}")
        options[key] = value
    if name in OPTIONS or name == "folder":
        if not arg:
            raise PrivmedError(f"{name} needs a path: --dataset {name}:<path>")
    return name, arg, options


def load_dataset(
    spec: str,
    *,
    seed: int,
    n_sites: int = 4,
    image_size: int = 32,
    n_classes: int = 2,
    shared_patient_fraction: float = 0.0,
    patients_scale: int = 1,
) -> Dataset:
    name, arg, options = parse_spec(spec)
    if name == "phantom":
        from privmed.data.phantom import PhantomConfig, default_sizes, make_phantom

        sizes = tuple(patients_scale * n for n in default_sizes(n_sites))
        return make_phantom(
            PhantomConfig(
                n_sites=n_sites,
                image_size=image_size,
                n_classes=n_classes,
                patients_per_site=sizes,
                shared_patient_fraction=shared_patient_fraction,
                seed=seed,
            )
        )
    if name == "medmnist":
        from privmed.data.medmnist import load_medmnist

        return load_medmnist(arg, slices=options.get("slices"))
    if name == "dicom":
        from privmed.data.dicom_series import load_dicom_dir

        return load_dicom_dir(arg, size=image_size, slices=options.get("slices"))
    if name == "nifti":
        from privmed.data.nifti import load_nifti_dir

        return load_nifti_dir(arg, size=image_size, slices=options.get("slices"))
    if name == "folder":
        from privmed.data.image_folder import load_image_folder

        return load_image_folder(arg, size=image_size)
    raise unknown_name("dataset", name, DATASETS)
