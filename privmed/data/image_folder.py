"""A folder of 2-D images with a CSV of labels and patient ids: ``folder:CSV``.

Layout: a CSV with a header row and the columns ``path,label,patient_id``;
``path`` is relative to the CSV's folder (or absolute) and names a PNG, JPEG,
BMP or TIFF image (read with Pillow) or a 2-D ``.npy`` array; ``label`` is a
non-negative integer; ``patient_id`` groups a patient's images so that
partitions stay patient-level. Images are made grey (or RGB when any image is
colour), scaled to [0, 1] and resized to ``size``² (MONAI ``Resize``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from privmed.data.base import ArraySet, Dataset
from privmed.data.volumes import csv_rows
from privmed.errors import PrivmedError

COLUMNS = ("path", "label", "patient_id")


def _read_image(p: Path) -> np.ndarray:
    """[C, H, W] float32, C = 1 (grey) or 3 (colour), values as stored."""
    if p.suffix.lower() == ".npy":
        arr = np.load(p, allow_pickle=False)
        if arr.ndim != 2:
            raise ValueError(f"a .npy image must be 2-D, got shape {arr.shape}")
        return arr.astype(np.float32)[None]
    from PIL import Image

    with Image.open(p) as im:
        if im.mode not in ("L", "I", "I;16", "I;16B", "I;16L", "F"):  # keep 16-bit and float grey as stored
            im = im.convert("RGB" if im.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr") else "L")
        arr = np.asarray(im, dtype=np.float32)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def load_image_folder(csv_path: str | Path, *, size: int = 32) -> Dataset:
    """The images a labels CSV lists, as a patient-aware 2-D :class:`Dataset`; each problem names the file."""
    from monai.transforms import Resize, ScaleIntensity

    csv_path = Path(csv_path)
    images, labels, pids = [], [], []
    for line, row, label in csv_rows(csv_path, COLUMNS, "labels CSV"):
        p = Path(row["path"])
        p = p if p.is_absolute() else csv_path.parent / p
        try:
            images.append(_read_image(p))
        except Exception as exc:  # noqa: BLE001 - name the file whatever the reader found wrong
            raise PrivmedError(
                f"{p} (labels CSV {csv_path}, line {line}) is not a readable image ({type(exc).__name__}: "
                f"{str(exc)[:120]})"
            ) from None
        labels.append(label)
        pids.append(row["patient_id"].strip())
    channels = max(im.shape[0] for im in images)
    resize = Resize(spatial_size=(size, size), mode="bilinear", anti_aliasing=True)
    out = [
        np.asarray(resize(ScaleIntensity()(np.repeat(im, channels // im.shape[0], axis=0))), dtype=np.float32)
        for im in images
    ]
    labs = np.asarray(labels, dtype=np.int64)
    data = ArraySet(images=np.stack(out), labels=labs, patient_ids=np.asarray(pids))
    return Dataset(
        name=f"folder:{csv_path.stem}", n_classes=int(labs.max()) + 1, data=data, info={"csv": str(csv_path)}
    )
