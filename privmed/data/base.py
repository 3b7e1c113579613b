"""Typed containers for images, sites and federations.

Every array set carries the patient id of each image, so that partitioners,
patient-level DP and membership inference can work at patient level.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ArraySet:
    """Images with their labels, patient ids and (optionally) lesion masks.

    images: float32 [N, C, H, W] (2-D) or [N, C, D, H, W] (3-D volumes);
    labels: int64 [N]; patient_ids: str [N]; masks: uint8 [N, 1, *spatial]
    or None (segmentation target).
    """

    images: np.ndarray
    labels: np.ndarray
    patient_ids: np.ndarray
    masks: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim not in (4, 5):
            raise ValueError(f"images must be [N, C, H, W] or [N, C, D, H, W], got shape {self.images.shape}")
        if len(self.labels) != n or len(self.patient_ids) != n:
            raise ValueError("images, labels and patient_ids must have the same length")
        if self.masks is not None and self.masks.shape[0] != n:
            raise ValueError("masks must have one entry per image")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: np.ndarray) -> ArraySet:
        idx = np.asarray(idx, dtype=np.int64)
        return ArraySet(
            images=self.images[idx],
            labels=self.labels[idx],
            patient_ids=self.patient_ids[idx],
            masks=None if self.masks is None else self.masks[idx],
        )

    @staticmethod
    def concat(parts: list[ArraySet]) -> ArraySet:
        parts = [p for p in parts if len(p)] or parts[:1]
        masks = None if any(p.masks is None for p in parts) else np.concatenate([p.masks for p in parts])
        return ArraySet(
            images=np.concatenate([p.images for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            patient_ids=np.concatenate([p.patient_ids for p in parts]),
            masks=masks,
        )

    def label_histogram(self, n_classes: int) -> list[int]:
        return np.bincount(self.labels, minlength=n_classes).astype(int).tolist()

    @property
    def n_patients(self) -> int:
        return int(len(np.unique(self.patient_ids)))

    @property
    def nbytes(self) -> int:
        """Bytes of the raw data (what pooling it at a coordinator would send)."""
        return int(self.images.nbytes + self.labels.nbytes + (0 if self.masks is None else self.masks.nbytes))


@dataclass(frozen=True)
class PatientMeta:
    """Quasi-identifiers of one patient (for linkage and de-identification work)."""

    patient_id: str
    age: int
    sex: str
    acquisition_date: str  # ISO date of first scan
    site: int


@dataclass(frozen=True)
class Dataset:
    """A whole data set before partitioning.

    ``site_of`` gives each image's natural site (the scanner/hospital that
    acquired it) when the data set has one (the phantom does, MedMNIST not).
    """

    name: str
    n_classes: int
    data: ArraySet
    site_of: np.ndarray | None = None
    patients: dict[str, PatientMeta] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.images.shape[1:])

    @property
    def n_natural_sites(self) -> int:
        return 0 if self.site_of is None else int(self.site_of.max()) + 1


@dataclass(frozen=True)
class SiteData:
    """What one hospital holds: its own train/validation/test images."""

    name: str
    train: ArraySet
    val: ArraySet
    test: ArraySet

    def distribution(self, n_classes: int) -> dict[str, Any]:
        return {
            "site": self.name,
            "patients": len(set(self.train.patient_ids) | set(self.val.patient_ids) | set(self.test.patient_ids)),
            "images": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            "labels_train": self.train.label_histogram(n_classes),
            "labels_test": self.test.label_histogram(n_classes),
        }


@dataclass(frozen=True)
class Federation:
    """A data set partitioned into sites, with the split that made it."""

    dataset_name: str
    n_classes: int
    image_shape: tuple[int, ...]
    split: str
    sites: tuple[SiteData, ...]
    patients: dict[str, PatientMeta] = field(default_factory=dict)

    def pooled(self, part: str) -> ArraySet:
        """All sites' ``part`` ("train", "val" or "test") pooled (centralised baseline, evaluation)."""
        return ArraySet.concat([getattr(s, part) for s in self.sites])

    def distribution(self) -> list[dict[str, Any]]:
        return [s.distribution(self.n_classes) for s in self.sites]
