"""DICOM series folders as volumes (pydicom), and ``dicom:DIR`` data sets.

Layout: ``DIR/<patient>/<series>/*.dcm`` (one folder per series, one
single-frame file per slice, as ``privmed deid`` writes it) and
``DIR/labels.csv`` (see :mod:`privmed.data.volumes`). The patient id is the
patient folder's name.

A series is sorted by each slice's position along the slice normal (the
cross product of Image Orientation (Patient)'s row and column directions,
dotted with Image Position (Patient)), as dcm2niix and MONAI's ITK reader do;
the slice spacing is the median step between those positions, the in-plane
spacing is Pixel Spacing. Stored values become modality values through
Rescale Slope and Intercept. What this reader refuses, naming the file: a
file that is not DICOM, slices of several series or orientations in one
folder, slices of different sizes, multi-frame files, two slices at one
position, a slice without position or orientation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from privmed.data.base import Dataset
from privmed.data.volumes import Volume, check_slices, patient_folders, read_labels, volume_dataset
from privmed.errors import PrivmedError


def read_series(folder: str | Path, *, patient_id: str = "") -> Volume:
    """One series folder as a :class:`Volume` sorted along the slice normal, spacing kept."""
    import pydicom

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise PrivmedError(f"series folder {folder} holds no files")
    slices = []
    for f in files:
        try:
            ds = pydicom.dcmread(f)
            arr = ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - name the file whatever pydicom found wrong
            raise PrivmedError(f"{f} is not a readable DICOM image ({type(exc).__name__}: {str(exc)[:120]})") from None
        if int(ds.get("NumberOfFrames", 1) or 1) > 1 or arr.ndim != 2:
            raise PrivmedError(f"{f}: multi-frame or colour images are not supported (one grey slice per file)")
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            raise PrivmedError(f"{f} has no Image Position/Orientation (Patient): cannot place the slice in the volume")
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        slices.append((f, ds, arr.astype(np.float32) * slope + intercept))
    first = slices[0][1]
    orient = np.asarray(first.ImageOrientationPatient, dtype=float)
    normal = np.cross(orient[:3], orient[3:])
    for f, ds, arr in slices[1:]:
        if ds.get("SeriesInstanceUID") != first.get("SeriesInstanceUID"):
            raise PrivmedError(f"{f} belongs to another series than {slices[0][0]}: one series per folder")
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, dtype=float), orient, atol=1e-4):
            raise PrivmedError(f"{f} has another orientation than {slices[0][0]}")
        if arr.shape != slices[0][2].shape:
            raise PrivmedError(
                f"{f} is {arr.shape[0]}x{arr.shape[1]}, {slices[0][0]} is "
                f"{slices[0][2].shape[0]}x{slices[0][2].shape[1]}"
            )
    pos = np.array([float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float))) for _, ds, _ in slices])
    order = np.argsort(pos, kind="stable")
    steps = np.diff(pos[order])
    if len(steps) and np.min(np.abs(steps)) < 1e-4:
        i = int(np.argmin(np.abs(steps)))
        raise PrivmedError(
            f"{slices[order[i]][0]} and {slices[order[i + 1]][0]} lie at the same position: duplicate slices?"
        )
    dz = float(np.median(steps)) if len(steps) else float(first.get("SliceThickness", 1.0) or 1.0)
    dy, dx = (float(v) for v in first.get("PixelSpacing", (1.0, 1.0)))
    voxels = np.stack([slices[i][2] for i in order])
    return Volume(patient_id=patient_id, series=folder.name, voxels=voxels, spacing=(dz, dy, dx), source=str(folder))


def load_dicom_dir(root: str | Path, *, size: int = 32, slices: str | None = None) -> Dataset:
    """``DIR/<patient>/<series>/*.dcm`` with ``DIR/labels.csv`` as a patient-aware :class:`Dataset`."""
    check_slices(slices)
    root = Path(root)
    volumes = []
    for patient in patient_folders(root, "DICOM"):
        series = sorted(p for p in patient.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not series:
            raise PrivmedError(f"patient folder {patient} holds no series folders; expected {patient}/<series>/*.dcm")
        volumes += [read_series(s, patient_id=patient.name) for s in series]
    labels_path = root / "labels.csv"
    return volume_dataset(
        f"dicom:{root.name}", volumes, read_labels(labels_path), labels_path=labels_path, size=size, slices=slices
    )
