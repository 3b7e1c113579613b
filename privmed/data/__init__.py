"""Data: the phantom generator, real-data loaders, patient-aware partitioners."""

from privmed.data.base import ArraySet, Dataset, Federation, PatientMeta, SiteData

__all__ = ["ArraySet", "Dataset", "Federation", "PatientMeta", "SiteData"]
