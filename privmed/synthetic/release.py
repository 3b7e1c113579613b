"""Releasing a synthetic data set: a MedMNIST-format ``.npz`` and a sample grid PNG per class.

The ``.npz`` has MedMNIST v2's keys (``train_images``, ``train_labels``,
``val_images``, ``val_labels``, ``test_images``, ``test_labels``; uint8
images [N, H, W] for one channel or [N, H, W, 3] for three; labels [N, 1]),
so ``privmed train --dataset medmnist:synth.npz`` and any MedMNIST tool read
it. The synthetic images are split 80/10/10 into the three parts (privmed's
loader pools and re-splits them). Like MedMNIST, the file has no patient
ids: each synthetic image is its own "patient".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from privmed.data.base import ArraySet
from privmed.errors import PrivmedError
from privmed.files import private_writer


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[N, C, H, W] floats in [0, 1] -> MedMNIST's uint8 [N, H, W] (C = 1) or [N, H, W, C] (C = 3)."""
    x = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
    if x.shape[1] == 1:
        return x[:, 0]
    if x.shape[1] == 3:
        return np.moveaxis(x, 1, -1)
    raise PrivmedError(f"MedMNIST files hold 1- or 3-channel images; the generator made {x.shape[1]} channels")


def write_medmnist(data: ArraySet, path: str | Path, *, seed: int, meta: dict[str, Any] | None = None) -> Path:
    """Write ``data`` as a MedMNIST ``.npz`` (80/10/10 train/val/test), owner-only; ``meta`` as JSON beside it."""
    p = Path(path)
    if p.suffix != ".npz":
        raise PrivmedError(f"--out must name a .npz file (MedMNIST format), got {p}")
    order = np.random.default_rng(seed).permutation(len(data))
    n_train, n_val = int(0.8 * len(data)), int(0.1 * len(data))
    parts = {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
    images = to_uint8(data.images)
    arrays = {}
    for name, idx in parts.items():
        arrays[f"{name}_images"] = images[idx]
        arrays[f"{name}_labels"] = data.labels[idx].astype(np.int64).reshape(-1, 1)
    p.parent.mkdir(parents=True, exist_ok=True)
    with private_writer(p) as fh:
        np.savez_compressed(fh, **arrays)
    if meta is not None:
        with private_writer(p.with_suffix(".json"), "w") as fh:
            fh.write(json.dumps(meta, indent=2, default=float))
    return p


def write_grids(data: ArraySet, n_classes: int, stem: str | Path, *, per_class: int = 16) -> list[Path]:
    """One PNG per class: up to ``per_class`` synthetic images of that class in a square grid."""
    from PIL import Image

    out = []
    images = to_uint8(data.images)
    for k in range(n_classes):
        tiles = images[data.labels == k][:per_class]
        if not len(tiles):
            continue
        side = int(np.ceil(np.sqrt(len(tiles))))
        h, w = tiles.shape[1:3]
        grid = np.zeros((side * h, side * w, *tiles.shape[3:]), dtype=np.uint8)
        for i, tile in enumerate(tiles):
            r, c = divmod(i, side)
            grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = tile
        path = Path(f"{stem}_class{k}.png")
        Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(path)
        out.append(path)
    return out
