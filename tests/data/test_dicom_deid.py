"""PS3.15 Annex E de-identification on pydicom's vendor files and on a file holding every Basic-profile attribute."""

import datetime as dt
import hashlib
import json
import shutil

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, UID_dictionary, generate_uid

from privmed.data.dicom_deid import deidentify_tree
from privmed.data.dicom_keys import day_shift, pseudo_patient, pseudo_uid, read_reid_table
from privmed.data.dicom_profile import Options, load_profile
from privmed.errors import PrivmedError

VENDOR = ("CT_small.dcm", "MR_small.dcm")
VALUE = {
    "DA": "20240315",
    "DT": "20240315101500",
    "TM": "101500",
    "AS": "045Y",
    "IS": "7",
    "DS": "1.5",
    "UI": "1.2.826.0.1.3680043.8.498.1",
    "CS": "SECRET",
    "AE": "SECRETAE",
    "PN": "Doe^Jane",
    "UR": "http://secret.example/123456",
}


def _vr(tag):
    if 0x50000000 <= tag < 0x70000000:
        return {0x3000: "OW", 0x4000: "LT"}.get(tag & 0xFFFF, "OB")
    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:  # newer than pydicom's dictionary: a file would carry its VR explicitly
        return "LO"


def _value(vr):
    if vr in VALUE:
        return VALUE[vr]
    if vr in ("US", "SS", "UL", "SL", "UV", "SV"):
        return 7
    if vr in ("FL", "FD"):
        return 7.5
    if vr == "AT":
        return 0x00100010
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        return b"SECRET!!"
    if vr == "SQ":
        item = Dataset()
        item.PatientName = "Doe^Nested"
        item.ReferencedSOPInstanceUID = VALUE["UI"]
        item.add_new(0x00091001, "LO", "private nested")
        return Sequence([item])
    return "SECRET 123456"


def every_attribute_file(path):
    """A file with every attribute of Table E.1-1 (and the repeating groups) set, plus private tags."""
    profile = load_profile()
    ds = Dataset()
    # group 0000 (command) cannot be stored in a file; group 0002 is the file meta, set below
    tags = [t for t in profile.basic if t >> 16 not in (0x0000, 0x0002)] + [0x50000010, 0x60003000, 0x60004000]
    for tag in tags:
        vr = _vr(tag)
        ds.add(DataElement(tag, vr, _value(vr)))
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR: no pixels
    ds.Modality = "SR"
    ds.BurnedInAnnotation = "NO"
    ds.add_new(0x00291010, "LO", "private top")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return tags


def digest(folder):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def key(tmp_path):
    k = tmp_path / "site.key"
    k.write_bytes(b"k" * 32)
    k.chmod(0o600)  # a key others can read is refused
    return k


def outputs(folder):
    return {str(p.relative_to(folder)): pydicom.dcmread(p) for p in sorted(folder.rglob("*.dcm"))}


ADDED = {0x00120062, 0x00120063, 0x00120064, 0x00280303}  # what de-identification sets (PS3.15 E.1.1)


def assert_profile_applied(original, out, key, profile=None, where=""):
    """Every attribute of ``original`` is in ``out`` as Table E.1-1's Basic column says; unlisted ones unchanged."""
    profile = profile or load_profile()
    for elem in original:
        tag, here = int(elem.tag), f"{where}{elem.keyword or hex(int(elem.tag))}"
        if elem.tag.is_private:
            assert tag not in out, f"{here}: private, must be removed"
            continue
        if tag in ADDED and not where:
            continue
        action = profile.action(tag, Options())
        got = out.get(tag)
        if action == "X":
            assert got is None, f"{here}: X, must be removed"
            continue
        if action is None and elem.VR not in ("UI", "SQ"):
            assert got is not None and got.value == elem.value, f"{here}: not listed, must be unchanged"
            continue
        assert got is not None, f"{here} ({action}) must stay present"
        if elem.VR == "SQ" and action in (None, "D", "K", "X/D", "Z/D", "X/Z/D"):  # items kept, each de-identified
            assert len(got.value) == len(elem.value), here
            for i, (a, b) in enumerate(zip(elem.value, got.value)):
                assert_profile_applied(a, b, key, profile, f"{here}[{i}].")
        elif action == "Z" or (action in ("X/Z", "X/Z/U*") and elem.VR != "UI"):
            assert len(got.value) == 0 if elem.VR == "SQ" else got.is_empty, f"{here}: Z, must be empty"
        elif elem.VR == "UI":  # U, D or X/Z/U* on a UID, or an unlisted instance UID: keyed pseudonym
            values = list(elem.value) if elem.VM > 1 else [elem.value]
            expect = [v if v in UID_dictionary else pseudo_uid(key, v) for v in values]
            assert (list(got.value) if got.VM > 1 else [got.value]) == expect, here
            assert all(UID(v).is_valid for v in expect), here
        elif tag == 0x00100020:
            assert got.value == pseudo_patient(key, elem.value), "Patient ID: keyed pseudonym"
        else:  # D: a dummy of the VR, never the original
            assert not got.is_empty and got.value != elem.value, f"{here}: D, must be a dummy"


def test_every_basic_profile_attribute_is_handled_as_the_profile_says(tmp_path, key):
    (tmp_path / "in").mkdir()
    tags = every_attribute_file(tmp_path / "in" / "all.dcm")
    s = deidentify_tree(tmp_path / "in", tmp_path / "out", key_file=key)
    assert s.written == 1 and not s.skipped
    (ds,) = outputs(tmp_path / "out").values()
    original = pydicom.dcmread(tmp_path / "in" / "all.dcm")
    assert len(tags) > 650 and all(t in original for t in tags)
    assert_profile_applied(original, ds, key.read_bytes())
    assert ds.PatientID == pseudo_patient(key.read_bytes(), "SECRET 123456")
    assert not any(e.tag.is_private for e in ds.iterall())
    assert ds.PatientIdentityRemoved == "YES" and ds.LongitudinalTemporalInformationModified == "REMOVED"
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100"]
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert (
        "SECRET" not in str(ds)
        and b"Doe" not in (tmp_path / "out").joinpath(next(iter(outputs(tmp_path / "out")))).read_bytes()
    )


def test_options_keep_characteristics_shift_dates_and_clean_descriptors(tmp_path, key):
    (tmp_path / "in").mkdir()
    every_attribute_file(tmp_path / "in" / "all.dcm")
    ds = pydicom.dcmread(tmp_path / "in" / "all.dcm")
    ds.StudyDescription = "Brain MR of Jane 2024-03-15 mrn 8812345"
    ds.save_as(tmp_path / "in" / "all.dcm")
    opts = Options(retain_modified_dates=True, retain_patient_characteristics=True, clean_descriptors=True)
    deidentify_tree(tmp_path / "in", tmp_path / "out", key_file=key, options=opts)
    (ds,) = outputs(tmp_path / "out").values()
    assert ds.PatientAge == "045Y" and ds.PatientSex == "SECRET"  # K under Retain Patient Characteristics
    assert ds.StudyDate == ds.AcquisitionDate != "20240315" and ds.StudyTime == "101500"
    assert ds.StudyDescription == "Brain MR of * * mrn *"  # cleaned: the file's own name, date and a digit run
    assert "PatientBirthDate" in ds and ds.PatientBirthDate in ("", None)  # not retained by the option
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100", "113107", "113108", "113105"]
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"


def vendor_tree(root, copies=3):
    """Three CT files of one series (a copy per slice) and the MR file, as a hospital folder might hold them."""
    (root / "Doe^John" / "ct").mkdir(parents=True)
    (root / "mr").mkdir()
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for i in range(copies):
        ct.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{100 + i}"
        ct.file_meta.MediaStorageSOPInstanceUID = ct.SOPInstanceUID
        ct.save_as(root / "Doe^John" / "ct" / f"{i}.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm"), root / "mr" / "MR_small.dcm")
    (root / "notes.txt").write_text("not dicom")
    (root / "broken.dcm").write_bytes(open(get_testdata_file("CT_small.dcm"), "rb").read()[:20000])
    return root


def test_vendor_files_uids_consistent_across_a_series_and_runs_inputs_unchanged(tmp_path, key):
    src = vendor_tree(tmp_path / "in")
    before = digest(src)
    a = deidentify_tree(
        src, tmp_path / "a", key_file=key, options=Options(retain_modified_dates=True), reid_table=tmp_path / "reid.bin"
    )
    assert digest(src) == before  # inputs never modified
    assert a.written == 4 and dict(a.skipped).keys() == {"notes.txt", "broken.dcm"}
    assert "truncated" in dict(a.skipped)["broken.dcm"] and "not a DICOM instance" in dict(a.skipped)["notes.txt"]
    out_a = outputs(tmp_path / "a")
    ct = [ds for ds in out_a.values() if ds.Modality == "CT"]
    assert len({d.SeriesInstanceUID for d in ct}) == 1 and len({d.SOPInstanceUID for d in ct}) == 3
    assert len({d.FrameOfReferenceUID for d in ct}) == 1 and len({d.PatientID for d in ct}) == 1
    for name, d in out_a.items():
        assert name == f"{d.PatientID}/{d.SeriesInstanceUID}/{d.SOPInstanceUID}.dcm" and "Doe" not in name
        assert not any(e.tag.is_private for e in d.iterall()) and d.PatientName == ""
        assert all(
            UID(d[k].value).is_valid and d[k].value.startswith("2.25.")
            for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
        )
    original = pydicom.dcmread(get_testdata_file("CT_small.dcm"))

    def days(a, b):
        return (dt.date(int(a[:4]), int(a[4:6]), int(a[6:])) - dt.date(int(b[:4]), int(b[4:6]), int(b[6:]))).days

    shifts = {
        days(d[k].value, original[k].value)
        for d in ct
        for k in ("StudyDate", "SeriesDate", "ContentDate", "AcquisitionDate")
    }
    assert len(shifts) == 1 and -3650 <= shifts.pop() < 0  # one shift for every date of one patient
    assert ct[0].StudyTime == original.StudyTime  # whole-day shift: time of day kept
    mr = [d for d in out_a.values() if d.Modality == "MR"][0]
    mr_original = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    assert (
        days(mr.StudyDate, mr_original.StudyDate)
        == day_shift(key.read_bytes(), "4MR1")
        != day_shift(key.read_bytes(), "1CT1")
    )
    # same key, another run: identical pseudonyms, and every attribute of the vendor files as the profile says
    deidentify_tree(src, tmp_path / "b", key_file=key)
    out_b = outputs(tmp_path / "b")
    assert sorted(out_b) == sorted(out_a)
    for source in (src / "Doe^John" / "ct" / "0.dcm", src / "mr" / "MR_small.dcm"):
        before_ds = pydicom.dcmread(source)
        (after_ds,) = [
            d for d in out_b.values() if d.SOPInstanceUID == pseudo_uid(key.read_bytes(), before_ds.SOPInstanceUID)
        ]
        assert_profile_applied(before_ds, after_ds, key.read_bytes())
    assert not (tmp_path / "b.reid").exists() and sorted(
        p.name for p in tmp_path.iterdir() if p.name.startswith("b")
    ) == ["b", "b.deid-audit.jsonl", "b.deid-summary.json"]  # a re-identification table only when asked
    other = tmp_path / "other.key"
    other.write_bytes(b"o" * 32)
    other.chmod(0o600)
    deidentify_tree(src, tmp_path / "c", key_file=other)
    assert not set(outputs(tmp_path / "c")) & set(out_a)
    table = read_reid_table(tmp_path / "reid.bin", key=key.read_bytes())
    assert (
        table["patients"][ct[0].PatientID] == original.PatientID
        and table["uids"][ct[0].StudyInstanceUID] == original.StudyInstanceUID
    )
    assert b"1CT1" not in (tmp_path / "reid.bin").read_bytes()
    with pytest.raises(PrivmedError, match="does not open with this key"):
        read_reid_table(tmp_path / "reid.bin", key=other.read_bytes())
    audit = [json.loads(line) for line in open(a.audit_log)]
    assert {r["file"] for r in audit} == {str(p.relative_to(src)) for p in before}
    assert "1CT1" not in open(a.audit_log).read() and not (tmp_path / "a" / "a.deid-audit.jsonl").exists()


def test_burned_in_annotation_is_refused_unless_allowed(tmp_path, key):
    (tmp_path / "in").mkdir()
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.BurnedInAnnotation = "YES"
    ds.save_as(tmp_path / "in" / "burn.dcm")
    ds.BurnedInAnnotation, ds.Modality, ds.SOPInstanceUID = "NO", "US", generate_uid()
    ds.save_as(tmp_path / "in" / "us.dcm")
    s = deidentify_tree(tmp_path / "in", tmp_path / "out", key_file=key)
    assert s.written == 0 and {p for p, _ in s.refused} == {"burn.dcm", "us.dcm"}
    assert "allow_burned_in" in s.refused[0][1]
    assert deidentify_tree(tmp_path / "in", tmp_path / "out2", key_file=key, allow_burned_in=True).written == 2


def test_bad_folders_and_keys_are_named(tmp_path, key):
    (tmp_path / "in").mkdir()
    with pytest.raises(PrivmedError, match="outside the input folder"):
        deidentify_tree(tmp_path / "in", tmp_path / "in" / "out", key_file=key)
    with pytest.raises(PrivmedError, match="nowhere not found"):
        deidentify_tree(tmp_path / "nowhere", tmp_path / "out", key_file=key)
    with pytest.raises(PrivmedError, match="nokey"):
        deidentify_tree(tmp_path / "in", tmp_path / "out", key_file=tmp_path / "nokey")


def test_cli_deid(tmp_path, key):
    from typer.testing import CliRunner

    from privmed.cli import app

    src = vendor_tree(tmp_path / "in", copies=1)
    res = CliRunner().invoke(
        app, ["deid", str(src), str(tmp_path / "out"), "--key", str(key), "--retain-patient-characteristics"]
    )
    assert res.exit_code == 0, res.output
    assert "wrote 2 of 4 files" in res.output and "left out notes.txt" in res.output
    assert all(d.PatientSex for d in outputs(tmp_path / "out").values())


def test_a_dataset_without_file_meta_is_written_as_a_part10_file(tmp_path, key):
    (tmp_path / "in").mkdir()
    shutil.copy(get_testdata_file("ExplVR_LitEndNoMeta.dcm"), tmp_path / "in" / "old.dcm")
    assert open(tmp_path / "in" / "old.dcm", "rb").read()[128:132] != b"DICM"
    s = deidentify_tree(tmp_path / "in", tmp_path / "out", key_file=key, allow_burned_in=True)
    assert s.written == 1, s.skipped
    (out,) = (tmp_path / "out").rglob("*.dcm")
    assert out.read_bytes()[128:132] == b"DICM" and pydicom.dcmread(out).PatientIdentityRemoved == "YES"
