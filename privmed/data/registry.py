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

import numpy as np

from privmed.data.base import Dataset, Federation
from privmed.errors import PrivmedError, unknown_name

DATASETS = ("phantom", "medmnist", "dicom", "nifti", "folder")
OPTIONS = {"medmnist": ("slices",), "dicom": ("slices",), "nifti": ("slices",), "phantom": ("volume", "sequence")}
NEEDS_PATH = ("medmnist", "dicom", "nifti", "folder")


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
    if name in NEEDS_PATH:
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
        from privmed.data.phantom import make_phantom

        return make_phantom(
            phantom_config(
                arg,
                seed=seed,
                n_sites=n_sites,
                image_size=image_size,
                n_classes=n_classes,
                shared_patient_fraction=shared_patient_fraction,
                patients_scale=patients_scale,
                options=options,
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


def phantom_config(
    arg: str,
    *,
    seed: int,
    n_sites: int,
    image_size: int,
    n_classes: int,
    shared_patient_fraction: float,
    patients_scale: int,
    options: dict[str, str] | None = None,
):
    """The phantom's config for ``phantom[:vN][?volume=1|?sequence=T]`` (``arg``: what follows the colon, before ``?``).

    ``volume=1``: one volume of ``image_size``³ voxels per patient visit instead of four 2-D slices.
    ``sequence=T``: four follow-up sequences of ``T`` visits per patient, each [T, H, W] (visits as channels),
    labelled stable / progression (:func:`privmed.data.phantom._scan_sequence`).
    """
    from privmed.data.phantom import PhantomConfig, default_sizes, parse_version

    volume = (options or {}).get("volume", "0")
    if volume not in ("0", "1"):
        raise PrivmedError(f"phantom option volume must be 0 or 1, got {volume!r}")
    sequence = (options or {}).get("sequence", "0")
    if not sequence.isdigit() or int(sequence) == 1:
        raise PrivmedError(f"phantom option sequence must be a number of visits >= 2 (or 0: none), got {sequence!r}")
    return PhantomConfig(
        images_per_patient=1 if volume == "1" else 4,
        volume=volume == "1",
        sequence=int(sequence),
        n_sites=n_sites,
        image_size=image_size,
        n_classes=n_classes,
        patients_per_site=tuple(patients_scale * n for n in default_sizes(n_sites)),
        shared_patient_fraction=shared_patient_fraction,
        seed=seed,
        version=parse_version(arg),
    )


def load_federation(
    spec: str,
    *,
    seed: int,
    sites: int,
    split: str,
    scanners: int,
    image_size: int = 32,
    n_classes: int = 2,
    shared_patient_fraction: float = 0.0,
    patients_scale: int = 1,
) -> Federation:
    """The data set ``spec`` split into ``sites`` by ``split``; ``scanners``: how many sites a generator draws.

    Phantom v2 keeps its held-out test patients as the sites' test sets
    (:func:`privmed.data.phantom.phantom_federation`); every other data set is
    partitioned into train/validation/test by patient.
    """
    from privmed.data.partition import partition

    name, arg, options = parse_spec(spec)
    kw = {
        "image_size": image_size,
        "n_classes": n_classes,
        "shared_patient_fraction": shared_patient_fraction,
        "patients_scale": patients_scale,
    }
    if name == "phantom":
        from privmed.data.phantom import phantom_federation

        config = phantom_config(arg, seed=seed, n_sites=scanners, options=options, **kw)
        if config.version >= 2:
            return phantom_federation(config, split=split, seed=seed, n_sites=sites)
    dataset = load_dataset(spec, seed=seed, n_sites=scanners, **kw)
    return partition(dataset, n_sites=sites, split=split, seed=seed)


def site_data_spec(data: str) -> str:
    """What ``privmed site --data`` names, as a data set spec (absolute path): ``hospital_a.npz`` (MedMNIST format),
    a labels ``.csv`` or a folder holding ``labels.csv`` (a folder of images), or a spec (``medmnist:PATH``,
    ``folder:CSV``, ``dicom:DIR``, ``nifti:DIR``); ``phantom:K`` (the run's phantom's site K, demos) stays as it is."""
    from pathlib import Path

    name, sep, _ = data.partition(":")
    if sep and name == "phantom":
        return data
    if sep and name in DATASETS:
        path, q, query = data[len(name) + 1 :].partition("?")
        return f"{name}:{Path(path).expanduser().resolve()}{q}{query}"
    p = Path(data).expanduser().resolve()
    if p.is_dir() and (p / "labels.csv").is_file():
        return f"folder:{p / 'labels.csv'}"
    if p.suffix.lower() == ".npz":
        return f"medmnist:{p}"
    if p.suffix.lower() == ".csv":
        return f"folder:{p}"
    raise PrivmedError(
        f"--data {data!r}: give a MedMNIST-format .npz, a labels .csv or a folder holding labels.csv (a folder of "
        'images: README, "Your own data"), medmnist:/dicom:/nifti:/folder:<path>, or phantom:K (demos)'
    )


def load_site(spec: str, *, name: str, seed: int, image_size: int = 32, n_classes: int = 2) -> Federation:
    """One hospital's own data set as a federation of one site named ``name``.

    A MedMNIST file keeps its own train/validation/test split (the hospital
    made it); any other data set is split by patient (:func:`privmed.data.partition.partition`, one site, ``iid``).
    ``n_classes`` is the run's: a site whose labels stop short of it still has that many classes; more labels, more.
    """
    from dataclasses import replace

    from privmed.data.base import SiteData
    from privmed.data.partition import partition

    dataset = load_dataset(spec, seed=seed, n_sites=1, image_size=image_size, n_classes=n_classes)
    counts = dataset.info.get("splits")
    if counts:
        ends = np.cumsum([counts["train"], counts["val"], counts["test"]])
        parts = [dataset.data.subset(np.arange(a, b)) for a, b in zip([0, *ends[:-1]], ends)]
        fed = Federation(dataset.name, dataset.n_classes, dataset.image_shape, "own", (SiteData(name, *parts),))
    else:
        fed = partition(dataset, n_sites=1, split="iid", seed=seed)
        fed = replace(fed, split="own", sites=(replace(fed.sites[0], name=name),))
    return replace(fed, n_classes=max(fed.n_classes, n_classes))
