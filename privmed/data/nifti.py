"""NIfTI volumes (nibabel): ``nifti:DIR`` data sets, and export with a scrubbed header.

Layout: ``DIR/<patient>/*.nii`` or ``*.nii.gz`` (one 3-D volume per file) and
``DIR/labels.csv`` (see :mod:`privmed.data.volumes`; its optional ``series``
column names a file). Each volume is turned to the closest canonical (RAS+)
orientation and stored [D, H, W] with D the superior axis, so that
``slices=axial`` cuts axial planes; spacing is the header's zooms.

Export: a NIfTI header has free-text fields (``descrip``, ``aux_file``,
``intent_name``, the Analyze-era ``db_name``) and extensions, which
converters fill with scanner, protocol, dates, and sometimes a whole DICOM
header (dcm2niix's, AFNI's, the DICOM extension code 2).
:func:`scrub_nifti_header` empties the fields and drops every extension;
:func:`export_nifti` writes a volume with only geometry and data type kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from privmed.data.base import Dataset
from privmed.data.volumes import Volume, check_slices, patient_folders, read_labels, volume_dataset
from privmed.errors import PrivmedError

SUFFIXES = (".nii", ".nii.gz")
SCRUBBED_FIELDS = ("descrip", "aux_file", "db_name", "intent_name")


def _is_nifti(p: Path) -> bool:
    return p.is_file() and p.name.endswith(SUFFIXES) and not p.name.startswith(".")


def read_nifti(path: str | Path, *, patient_id: str = "") -> Volume:
    """One 3-D NIfTI file as a :class:`Volume` in closest-canonical orientation, [D, H, W] = (S, A, R) axes."""
    import nibabel as nib

    p = Path(path)
    try:
        img = nib.as_closest_canonical(nib.load(p))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - name the file whatever nibabel found wrong
        raise PrivmedError(f"{p} is not a readable NIfTI file ({type(exc).__name__}: {str(exc)[:120]})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise PrivmedError(
            f"{p} holds a {data.ndim}-D image of shape {data.shape}; one 3-D volume per file is supported"
        )
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    voxels = np.ascontiguousarray(data.transpose(2, 1, 0))  # (R, A, S) -> (S, A, R)
    return Volume(
        patient_id=patient_id, series=p.name, voxels=voxels, spacing=(zooms[2], zooms[1], zooms[0]), source=str(p)
    )


def load_nifti_dir(root: str | Path, *, size: int = 32, slices: str | None = None) -> Dataset:
    """``DIR/<patient>/*.nii[.gz]`` with ``DIR/labels.csv`` as a patient-aware :class:`Dataset`."""
    check_slices(slices)
    root = Path(root)
    volumes = []
    for patient in patient_folders(root, "NIfTI"):
        files = sorted(p for p in patient.iterdir() if _is_nifti(p))
        if not files:
            raise PrivmedError(f"patient folder {patient} holds no .nii or .nii.gz file")
        volumes += [read_nifti(f, patient_id=patient.name) for f in files]
    labels_path = root / "labels.csv"
    return volume_dataset(
        f"nifti:{root.name}", volumes, read_labels(labels_path), labels_path=labels_path, size=size, slices=slices
    )


def scrub_nifti_header(img):
    """A copy of ``img`` whose header keeps geometry and data type only: text fields emptied, extensions dropped."""
    import nibabel as nib

    header = img.header.copy()
    for name in SCRUBBED_FIELDS:
        if name in header:
            header[name] = b""
    if hasattr(header, "extensions"):
        del header.extensions[:]
    out = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, header)
    if hasattr(out.header, "extensions"):
        del out.header.extensions[:]
    return out


def export_nifti(source, out_path: str | Path, *, affine: np.ndarray | None = None) -> Path:
    """Write ``source`` (a NIfTI path, a nibabel image, or an array with ``affine``) to ``out_path``, header
    scrubbed."""
    import nibabel as nib

    if isinstance(source, (str, Path)):
        try:
            img = nib.load(Path(source))
        except Exception as exc:  # noqa: BLE001
            raise PrivmedError(
                f"{source} is not a readable NIfTI file ({type(exc).__name__}: {str(exc)[:120]})"
            ) from None
    elif isinstance(source, np.ndarray):
        img = nib.Nifti1Image(source, np.eye(4) if affine is None else affine)
    else:
        img = source
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(scrub_nifti_header(img), out)
    return out
