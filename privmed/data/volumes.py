"""What the volume loaders share: a labels CSV, resizing with MONAI, 3-D to 2-D slices.

A volume loader (DICOM series, NIfTI) reads ``ROOT/<patient>/...`` and a
``ROOT/labels.csv`` with a header row and the columns ``patient_id,label``
(label: a non-negative integer) and, optionally, ``series``: a series folder
(DICOM) or file name (NIfTI) that the row labels on its own; a row without
``series`` labels all that patient's volumes. Each volume is scaled to [0, 1]
(min-max, MONAI ``ScaleIntensity``) and resized (MONAI ``Resize``) to
``size``³ for a 5-D set [N, 1, D, H, W], or, with ``slices="axial"``, cut
along its first axis into 2-D slices resized to ``size``² (a 4-D set
[N, 1, H, W]) that keep the patient id and label of their volume, so
partitions stay patient-level. The original shape and voxel spacing (mm) of
each volume are kept in ``Dataset.info["volumes"]``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privmed.data.base import ArraySet, Dataset
from privmed.errors import PrivmedError

SLICE_AXES = ("axial",)


@dataclass(frozen=True)
class Volume:
    """One volume as read: voxels [D, H, W] (D along the slice normal), spacing (mm) per axis."""

    patient_id: str
    series: str
    voxels: np.ndarray
    spacing: tuple[float, float, float]
    source: str  # the file or folder it came from (for messages)


def csv_rows(path: Path, columns: tuple[str, ...], what: str) -> list[tuple[int, dict[str, str], int]]:
    """(line, row, label) of a CSV with a header holding ``columns`` (two of them ``patient_id`` and ``label``).

    Each problem names the file and the line: missing file or columns, no rows,
    a label that is not a non-negative integer, an empty patient id.
    """
    header = ",".join(columns)
    if not path.is_file():
        raise PrivmedError(f"{what} {path} not found; write one with the header {header}")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {c for c in columns if not c.startswith("[")} - set(reader.fieldnames or ())
        if missing:
            raise PrivmedError(
                f"{what} {path} lacks the column(s) {', '.join(sorted(missing))}; header must be {header}"
            )
        rows = list(enumerate(reader, start=2))
    if not rows:
        raise PrivmedError(f"{what} {path} has no rows")
    out = []
    for line, row in rows:
        try:
            label = int(row["label"])
            if label < 0:
                raise ValueError
        except (TypeError, ValueError):
            raise PrivmedError(
                f"{what} {path}, line {line}: label {row['label']!r} is not a non-negative integer"
            ) from None
        if not str(row.get("patient_id") or "").strip():
            raise PrivmedError(f"{what} {path}, line {line}: empty patient_id")
        out.append((line, row, label))
    return out


def read_labels(path: Path) -> dict[tuple[str, str], int]:
    """``{(patient_id, series or ""): label}`` from a volume set's labels CSV."""
    return {
        (row["patient_id"].strip(), str(row.get("series") or "").strip()): label
        for _, row, label in csv_rows(path, ("patient_id", "label", "[series]"), "labels file")
    }


def label_of(labels: dict[tuple[str, str], int], vol: Volume, labels_path: Path) -> int:
    for key in ((vol.patient_id, vol.series), (vol.patient_id, "")):
        if key in labels:
            return labels[key]
    raise PrivmedError(f"{vol.source} has no label: add a row for patient {vol.patient_id!r} to {labels_path}")


def resize(voxels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Min-max scale to [0, 1], then resize ([D, H, W] or [H, W]) with MONAI's anti-aliased linear interpolation."""
    from monai.transforms import Resize, ScaleIntensity

    x = ScaleIntensity()(np.asarray(voxels, dtype=np.float32)[None])
    mode = "trilinear" if len(shape) == 3 else "bilinear"
    return np.asarray(Resize(spatial_size=shape, mode=mode, anti_aliasing=True)(x), dtype=np.float32)


def volume_dataset(
    name: str,
    volumes: list[Volume],
    labels: dict[tuple[str, str], int],
    *,
    labels_path: Path,
    size: int,
    slices: str | None = None,
) -> Dataset:
    """5-D volumes [N, 1, size, size, size], or 2-D slices [M, 1, size, size] with ``slices="axial"``."""
    check_slices(slices)
    if size < 4:
        raise PrivmedError(f"image size {size} is too small; use 4 or more")
    images, ys, pids, info = [], [], [], []
    for vol in volumes:
        y = label_of(labels, vol, labels_path)
        info.append(
            {
                "patient_id": vol.patient_id,
                "series": vol.series,
                "shape": list(vol.voxels.shape),
                "spacing_mm": [round(float(s), 6) for s in vol.spacing],
            }
        )
        if slices is None:
            images.append(resize(vol.voxels, (size, size, size)))
            ys.append(y)
            pids.append(vol.patient_id)
        else:
            for plane in vol.voxels:
                images.append(resize(plane, (size, size)))
                ys.append(y)
                pids.append(vol.patient_id)
    labels_arr = np.asarray(ys, dtype=np.int64)
    data = ArraySet(images=np.stack(images), labels=labels_arr, patient_ids=np.asarray(pids))
    return Dataset(
        name=name, n_classes=int(labels_arr.max()) + 1, data=data, info={"volumes": info, "slices": slices or "none"}
    )


def check_slices(slices: str | None) -> None:
    if slices is not None and slices not in SLICE_AXES:
        raise PrivmedError(
            f"slices={slices!r}: only {', '.join(SLICE_AXES)} slices (along the volume's first axis) are supported"
        )


def to_slices(data: ArraySet) -> ArraySet:
    """A 5-D set [N, C, D, H, W] as its axial slices [N*D, C, H, W], each keeping its volume's label and patient id."""
    if data.images.ndim != 5:
        raise PrivmedError(f"slices need 3-D volumes [N, C, D, H, W]; these images are {data.images.shape}")
    n, c, d, h, w = data.images.shape
    return ArraySet(
        images=np.ascontiguousarray(data.images.transpose(0, 2, 1, 3, 4).reshape(n * d, c, h, w)),
        labels=np.repeat(data.labels, d),
        patient_ids=np.repeat(data.patient_ids, d),
        masks=None if data.masks is None else data.masks.transpose(0, 2, 1, 3, 4).reshape(n * d, -1, h, w),
    )


def patient_folders(root: Path, kind: str) -> list[Path]:
    """The patient folders of ``root`` (sorted); a missing or empty root is an error naming it and the layout."""
    if not root.is_dir():
        raise PrivmedError(f"{kind} folder {root} not found; expected {root}/<patient>/... and {root}/labels.csv")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise PrivmedError(f"{kind} folder {root} holds no patient folders; expected {root}/<patient>/...")
    return folders
