"""MedMNIST loader: a local ``.npz`` in the MedMNIST v2 format (2-D and 3-D data sets).

MedMNIST (Yang et al. 2023, Scientific Data) ships each data set as one
``.npz`` with ``train_images``, ``train_labels``, ``val_images``,
``val_labels``, ``test_images``, ``test_labels``; images are uint8
[N, H, W] (grey), [N, H, W, 3] (colour) or, for the 3-D sets
(OrganMNIST3D, NoduleMNIST3D, ...), [N, D, H, W] volumes, which load as
[N, 1, D, H, W] or, with ``slices="axial"``, as their D slices each
(keeping the volume's label and "patient" id); labels [N, 1]. privmed never
downloads it. MedMNIST has no patient ids and no sites: each image is its own
"patient" (so patient-level DP and patient-level membership inference reduce
to image level here), and the data set must be split with ``iid``,
``dirichlet:<a>`` or ``quantity:<b>``. The official train/val/test split is
pooled; privmed's partitioner re-splits it per site.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from privmed.data.base import ArraySet, Dataset
from privmed.data.volumes import check_slices, to_slices
from privmed.errors import PrivmedError

KEYS = ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels")
HOW_TO_GET = (
    "get it on a machine with internet (`pip install medmnist`, then "
    "`python -m medmnist save --flag=pneumoniamnist` or download from zenodo.org/records/10519652) "
    "and pass --dataset medmnist:/path/to/pneumoniamnist.npz"
)


def load_medmnist(path: str | Path, *, slices: str | None = None) -> Dataset:
    """Load a MedMNIST ``.npz``; every problem is a PrivmedError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise PrivmedError(f"MedMNIST file {p} not found; {HOW_TO_GET}")
    try:
        with np.load(p, allow_pickle=False) as npz:
            missing = [k for k in KEYS if k not in npz.files]
            if missing:
                raise PrivmedError(f"MedMNIST file {p} lacks {', '.join(missing)}; is it a MedMNIST .npz?")
            parts = {k: npz[k] for k in KEYS}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise PrivmedError(f"MedMNIST file {p} is not a readable .npz ({exc}); {HOW_TO_GET}") from None

    images, labels, counts = [], [], {}
    shape = None
    for split in ("train", "val", "test"):
        x, y = parts[f"{split}_images"], parts[f"{split}_labels"]
        if x.ndim not in (3, 4):
            raise PrivmedError(
                f"MedMNIST file {p}: {split}_images has shape {x.shape}, expected [N,H,W], [N,H,W,3] or [N,D,H,W]"
            )
        if shape is not None and x.shape[1:] != shape:
            raise PrivmedError(f"MedMNIST file {p}: {split}_images has image shape {x.shape[1:]}, other splits {shape}")
        shape = x.shape[1:]
        y = np.asarray(y).reshape(len(y), -1)
        if len(y) != len(x):
            raise PrivmedError(f"MedMNIST file {p}: {split} has {len(x)} images but {len(y)} labels")
        if y.shape[1] != 1:
            raise PrivmedError(
                f"MedMNIST file {p}: {split}_labels has {y.shape[1]} columns; multi-label sets are not supported"
            )
        if not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
            raise PrivmedError(f"MedMNIST file {p}: {split}_labels must be non-negative integers")
        x = x.astype(np.float32) / (255.0 if x.dtype == np.uint8 else max(float(x.max()), 1.0))
        volume = x.ndim == 4 and x.shape[-1] not in (1, 3)  # [N, D, H, W]: a 3-D set
        images.append(x[:, None] if x.ndim == 3 or volume else np.moveaxis(x, -1, 1))
        labels.append(y[:, 0].astype(np.int64))
        counts[split] = len(x)
    imgs, labs = np.concatenate(images), np.concatenate(labels)
    if len(imgs) == 0:
        raise PrivmedError(f"MedMNIST file {p} holds no images")
    ids = np.asarray([f"I{i:06d}" for i in range(len(imgs))])
    data = ArraySet(images=np.ascontiguousarray(imgs), labels=labs, patient_ids=ids)
    info = {"path": str(p), "splits": counts}  # the file's own split: train, val, test images in that order
    if slices is not None:
        info.pop("splits")  # slicing multiplies the images: the file's split no longer indexes them
        check_slices(slices)
        if data.images.ndim != 5:
            raise PrivmedError(f"MedMNIST file {p} holds 2-D images; slices applies to 3-D sets only")
        data = to_slices(data)
    return Dataset(name=f"medmnist:{p.stem}", n_classes=int(labs.max()) + 1, data=data, info=info)
