"""Small DICOM series and NIfTI volumes written by the tests (no data is downloaded)."""

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_series(
    folder,
    volume,
    *,
    spacing=(2.5, 0.5, 0.5),
    patient="P",
    shuffle=True,
    slope=1.0,
    intercept=0.0,
    seed=0,
    orientation=(1, 0, 0, 0, 1, 0),
    step=(0.0, 0.0, 1.0),
):
    """``volume`` [D, H, W] (stored values) as one CT file per slice, in shuffled file order, slice d at d *
    spacing[0] * step."""
    folder.mkdir(parents=True, exist_ok=True)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    order = np.random.default_rng(seed).permutation(len(volume)) if shuffle else np.arange(len(volume))
    for n, d in enumerate(order):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.Modality = CTImageStorage, "CT"
        ds.PatientID, ds.PatientName = patient, f"{patient}^Test"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.ImageOrientationPatient = list(orientation)
        ds.ImagePositionPatient = [float(d) * spacing[0] * s for s in step]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = spacing[0]
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.Rows, ds.Columns = volume.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(volume[d], dtype=np.uint16).tobytes()
        ds.save_as(folder / f"slice{n:03d}.dcm", enforce_file_format=True)
    return folder


def blob_volume(label, shape=(6, 12, 12), seed=0):
    """A noisy volume with a bright cube when ``label`` is 1: a task a CNN can learn from a few slices."""
    rng = np.random.default_rng(seed)
    v = rng.integers(0, 200, size=shape)
    if label:
        v[:, 3:9, 3:9] += 800
    return v.astype(np.uint16)


def write_dicom_set(root, n_patients=8):
    """``root/<patient>/<series>/*.dcm`` and ``root/labels.csv``, labels alternating 0/1."""
    rows = ["patient_id,label"]
    for i in range(n_patients):
        write_series(root / f"pat{i}" / "ct", blob_volume(i % 2, seed=i), patient=f"pat{i}", seed=i)
        rows.append(f"pat{i},{i % 2}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def write_nifti_set(root, n_patients=8):
    """``root/<patient>/vol.nii.gz`` and ``root/labels.csv``."""
    import nibabel as nib

    rows = ["patient_id,label"]
    for i in range(n_patients):
        (root / f"pat{i}").mkdir(parents=True)
        vol = blob_volume(i % 2, seed=i).astype(np.float32).transpose(2, 1, 0)  # (x, y, z)
        nib.save(nib.Nifti1Image(vol, np.diag([0.5, 0.5, 2.5, 1.0])), root / f"pat{i}" / "vol.nii.gz")
        rows.append(f"pat{i},{i % 2}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root
