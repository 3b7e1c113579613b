"""Volume and image loaders: DICOM series, NIfTI (and its scrubbed export), 3-D MedMNIST, image folders."""

import nibabel as nib
import numpy as np
import pydicom
import pytest

from privmed.data.base import ArraySet
from privmed.data.dicom_series import load_dicom_dir, read_series
from privmed.data.image_folder import load_image_folder
from privmed.data.medmnist import load_medmnist
from privmed.data.nifti import export_nifti, load_nifti_dir, read_nifti
from privmed.data.partition import partition
from privmed.data.registry import load_dataset
from privmed.data.volumes import to_slices
from privmed.errors import PrivmedError
from tests.data.conftest import write_dicom_set, write_nifti_set, write_series


def ramp(d=5, h=4, w=6):
    """Slice k holds the value 10 k everywhere: its position in the volume is readable from its pixels."""
    return np.repeat(np.arange(d, dtype=np.uint16)[:, None, None] * 10, h * w).reshape(d, h, w)


def test_arrayset_takes_volumes_and_slices_keep_patient_and_label():
    vols = ArraySet(
        images=np.zeros((3, 1, 4, 5, 5), np.float32), labels=np.array([0, 1, 1]), patient_ids=np.array(["a", "b", "b"])
    )
    assert len(vols.subset(np.array([1, 2]))) == 2 and ArraySet.concat([vols, vols]).images.shape == (6, 1, 4, 5, 5)
    s = to_slices(vols)
    assert (
        s.images.shape == (12, 1, 5, 5)
        and s.patient_ids.tolist() == ["a"] * 4 + ["b"] * 8
        and s.labels.tolist() == [0] * 4 + [1] * 8
    )
    with pytest.raises(ValueError, match=r"\[N, C, D, H, W\]"):
        ArraySet(images=np.zeros((3, 4, 5)), labels=np.zeros(3), patient_ids=np.zeros(3))


def test_dicom_series_is_sorted_by_position_with_spacing_and_rescale(tmp_path):
    folder = write_series(tmp_path / "s", ramp(), spacing=(2.5, 0.7, 0.6), slope=2.0, intercept=-5.0)
    assert sorted(p.name for p in folder.iterdir())[0] == "slice000.dcm"
    assert pydicom.dcmread(folder / "slice000.dcm").ImagePositionPatient[2] != 0  # files are not in slice order
    vol = read_series(folder, patient_id="p")
    assert vol.voxels.shape == (5, 4, 6) and vol.spacing == pytest.approx((2.5, 0.7, 0.6))
    assert vol.voxels[:, 0, 0].tolist() == [2.0 * 10 * k - 5.0 for k in range(5)]


def test_dicom_series_sorts_along_the_slice_normal_not_z(tmp_path):
    # sagittal: rows along +y, columns along -z, so the normal (row x column) is -x; slice k lies at x = 2 k
    folder = write_series(
        tmp_path / "sag", ramp(), spacing=(2.0, 1.0, 1.0), orientation=(0, 1, 0, 0, 0, -1), step=(1.0, 0.0, 0.0)
    )
    vol = read_series(folder)
    assert vol.voxels[:, 0, 0].tolist() == [40, 30, 20, 10, 0] and vol.spacing[0] == pytest.approx(2.0)


def test_dicom_series_problems_name_the_file(tmp_path):
    folder = write_series(tmp_path / "s", ramp())
    (folder / "readme.txt").write_text("hello")
    with pytest.raises(PrivmedError, match="readme.txt is not a readable DICOM"):
        read_series(folder)
    (folder / "readme.txt").unlink()
    write_series(tmp_path / "other", ramp())
    (tmp_path / "other" / "slice000.dcm").rename(folder / "zz.dcm")
    with pytest.raises(PrivmedError, match="zz.dcm belongs to another series"):
        read_series(folder)
    dup = write_series(tmp_path / "dup", ramp(d=2), shuffle=False)
    ds = pydicom.dcmread(dup / "slice001.dcm")
    ds.ImagePositionPatient = [0.0, 0.0, 0.0]
    ds.save_as(dup / "slice001.dcm")
    with pytest.raises(PrivmedError, match="same position"):
        read_series(dup)


def test_dicom_dir_loads_volumes_or_axial_slices_patient_aware(tmp_path):
    root = write_dicom_set(tmp_path / "ct", n_patients=4)
    ds = load_dicom_dir(root, size=8)
    assert ds.data.images.shape == (4, 1, 8, 8, 8) and ds.data.images.dtype == np.float32
    assert ds.data.patient_ids.tolist() == ["pat0", "pat1", "pat2", "pat3"] and ds.data.labels.tolist() == [0, 1, 0, 1]
    assert ds.info["volumes"][0]["spacing_mm"] == [2.5, 0.5, 0.5] and ds.info["volumes"][0]["shape"] == [6, 12, 12]
    sl = load_dataset(f"dicom:{root}?slices=axial", seed=0, image_size=8)
    assert sl.data.images.shape == (24, 1, 8, 8) and sl.data.n_patients == 4
    fed = partition(sl, n_sites=2, split="iid", seed=0)
    for site in fed.sites:  # each patient's slices stay at one site, in one role
        parts = [set(site.train.patient_ids), set(site.val.patient_ids), set(site.test.patient_ids)]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert not set(fed.sites[0].train.patient_ids) & set(fed.sites[1].train.patient_ids)


def test_labels_csv_problems_name_the_file_and_line(tmp_path):
    root = write_dicom_set(tmp_path / "ct", n_patients=2)
    (root / "labels.csv").write_text("patient_id,label\npat0,0\npat1,yes\n")
    with pytest.raises(PrivmedError, match=r"labels.csv, line 3: label 'yes'"):
        load_dicom_dir(root, size=8)
    (root / "labels.csv").write_text("patient_id,label\npat0,0\n")
    with pytest.raises(PrivmedError, match=r"pat1.*no label.*pat1.*labels.csv"):
        load_dicom_dir(root, size=8)
    (root / "labels.csv").write_text("patient,label\n")
    with pytest.raises(PrivmedError, match="lacks the column.*patient_id"):
        load_dicom_dir(root, size=8)
    with pytest.raises(PrivmedError, match="nope not found"):
        load_dataset(f"dicom:{tmp_path / 'nope'}", seed=0)
    with pytest.raises(PrivmedError, match="option 'slice=axial' is not valid.*slices="):
        load_dataset(f"dicom:{root}?slice=axial", seed=0)
    with pytest.raises(PrivmedError, match="only axial"):
        load_dataset(f"dicom:{root}?slices=coronal", seed=0)


def test_nifti_dir_is_canonical_with_spacing(tmp_path):
    root = write_nifti_set(tmp_path / "mr", n_patients=2)
    vol = read_nifti(root / "pat1" / "vol.nii.gz", patient_id="pat1")
    assert vol.voxels.shape == (6, 12, 12) and vol.spacing == pytest.approx((2.5, 0.5, 0.5))
    assert vol.voxels[:, 5, 5].min() > 700  # the bright cube of a label-1 volume, axes back in [D, H, W]
    ds = load_nifti_dir(root, size=8, slices="axial")
    assert ds.data.images.shape == (12, 1, 8, 8) and set(ds.data.patient_ids) == {"pat0", "pat1"}
    (root / "pat0" / "bad.nii").write_bytes(b"garbage")
    with pytest.raises(PrivmedError, match="bad.nii is not a readable NIfTI"):
        load_nifti_dir(root)


def test_nifti_export_scrubs_text_fields_and_extensions(tmp_path):
    img = nib.Nifti1Image(np.ones((4, 4, 3), np.float32), np.diag([0.5, 0.5, 2.0, 1.0]))
    h = img.header
    h["descrip"], h["aux_file"], h["db_name"], h["intent_name"] = b"Doe^Jane 1970", b"scan-mrn123", b"db", b"name"
    h.extensions.append(nib.nifti1.Nifti1Extension(2, b"(0010,0010) PN Doe^Jane"))  # a DICOM header extension
    nib.save(img, tmp_path / "in.nii")
    assert b"Doe^Jane" in (tmp_path / "in.nii").read_bytes()
    out = export_nifti(tmp_path / "in.nii", tmp_path / "out.nii")
    raw = out.read_bytes()
    assert b"Doe" not in raw and b"mrn123" not in raw
    back = nib.load(out)
    assert len(back.header.extensions) == 0 and all(
        back.header[f].tobytes().strip(b"\0") == b"" for f in ("descrip", "aux_file", "db_name", "intent_name")
    )
    assert np.allclose(back.affine, img.affine) and np.array_equal(back.get_fdata(), img.get_fdata())


def test_medmnist_3d_loads_volumes_or_slices(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, k in zip(("train", "val", "test"), (6, 2, 2)):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(k, 28, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 3, size=(k, 1))
    np.savez(tmp_path / "organmnist3d.npz", **arrays)
    ds = load_medmnist(tmp_path / "organmnist3d.npz")
    assert ds.data.images.shape == (10, 1, 28, 28, 28) and ds.image_shape == (1, 28, 28, 28)
    sl = load_dataset(f"medmnist:{tmp_path / 'organmnist3d.npz'}?slices=axial", seed=0)
    assert sl.data.images.shape == (280, 1, 28, 28) and sl.data.n_patients == 10


def test_image_folder_with_labels_and_patients(tmp_path):
    from PIL import Image

    rows = ["path,label,patient_id"]
    for i in range(4):
        Image.fromarray(np.full((10, 14), 40 * i, np.uint8)).save(tmp_path / f"g{i}.png")
        rows.append(f"g{i}.png,{i % 2},p{i // 2}")
    Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).save(tmp_path / "g16.png")  # 16-bit grey
    rows.append("g16.png,0,p2")
    np.save(tmp_path / "a.npy", np.eye(6))
    rows.append("a.npy,1,p2")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(f"folder:{tmp_path / 'labels.csv'}", seed=0, image_size=8)
    assert ds.data.images.shape == (6, 1, 8, 8) and ds.data.patient_ids.tolist() == ["p0", "p0", "p1", "p1", "p2", "p2"]
    assert len(np.unique(ds.data.images[4])) == 64  # 16-bit values kept, not clipped to 8 bits
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "c.png")
    (tmp_path / "labels.csv").write_text("\n".join(rows + ["c.png,0,p3"]) + "\n")
    assert load_image_folder(tmp_path / "labels.csv", size=8).data.images.shape == (
        7,
        3,
        8,
        8,
    )  # one colour image: all RGB
    (tmp_path / "labels.csv").write_text("\n".join(rows + ["missing.png,0,p3"]) + "\n")
    with pytest.raises(PrivmedError, match=r"missing.png \(labels CSV .*line 8\) is not a readable image"):
        load_image_folder(tmp_path / "labels.csv")
