"""De-identify a tree of DICOM files: PS3.15 Annex E Basic Profile with keyed pseudonyms.

Standard: DICOM PS3.15 Annex E, "Attribute Confidentiality Profiles",
Table E.1-1 (edition 2026c by default, read from dicom-anonymizer; see
:mod:`privmed.data.dicom_profile` for the table and the option columns).

Faithful:

- every attribute the Basic Application Level Confidentiality Profile lists is
  acted on wherever it occurs, at top level and in nested sequence items,
  including the repeating groups (curves 50xx, overlays 60xx): X removes, Z
  empties, D writes a dummy of the attribute's VR, U replaces a UID, K keeps,
  C cleans; every private attribute is removed (no Retain Safe Private);
- options Retain Longitudinal Temporal Information with Modified Dates,
  Retain Patient Characteristics and Clean Descriptors, each off by default;
- Patient Identity Removed (0012,0062) = YES, De-identification Method
  (0012,0063) and its Code Sequence (0012,0064) with the CID 7050 codes of the
  profile and the options used, Longitudinal Temporal Information Modified
  (0028,0303) = MODIFIED or REMOVED.

Differs (said, not hidden):

- a combined action (X/Z, X/D, Z/D, X/Z/D) would be chosen by the
  attribute's Type in the IOD; privmed does not look up IOD modules and takes
  the action that leaves a valid file for any Type: D where listed, else Z
  (X/Z/U*: U for a UID, else Z). Nothing listed is ever kept;
- D on a sequence keeps its items and de-identifies each (a dummy item would
  break the IOD); D on Patient ID writes the keyed pseudonym;
- U, and every UID the profile does not list whose value is not a UID the
  standard registers, becomes ``2.25.<HMAC of the site key and the UID>``:
  the same input UID gives the same output UID in every file and run with
  the same key, so series, studies and references stay linked;
- the modified-dates shift is a whole number of days (1 to 3650 back), keyed
  per patient (HMAC of the key and the Patient ID); times of day are kept;
- C on text (Clean Descriptors, and the C rows of Retain Patient
  Characteristics) is a heuristic scrub: the file's own names, IDs and dates,
  and any run of 5 or more digits, are replaced by ``*``. It cannot know an
  identity the file does not hold; review descriptors before releasing them;
- pixel data are not cleaned (no Clean Pixel Data Option): a file whose
  Burned In Annotation is YES or whose modality often burns in text (US, SC,
  XA) is refused unless ``allow_burned_in``.

Input files are only read. Output is ``OUT/<patient pseudonym>/<series
UID>/<SOP instance UID>.dcm`` (input folder names may hold names, so they
are not copied). The audit log (``OUT.deid-audit.jsonl``: per file, what
was removed, emptied, replaced, kept or cleaned, never a value) and the
summary (``OUT.deid-summary.json``) sit beside OUT, not in it, because they
name the input files: keep them at the site. The re-identification table is
written only when asked, AES-GCM encrypted with a key derived from the key file.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import UID, UID_dictionary

from privmed.data.dicom_keys import day_shift, pseudo_patient, pseudo_uid, write_reid_table
from privmed.data.dicom_profile import EDITION, Options, Profile, load_profile
from privmed.errors import PrivmedError
from privmed.privacy.pseudonym import load_key

BURNED_IN_MODALITIES = ("US", "SC", "XA")
_STRING_DUMMY = {"DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000Y", "IS": "0", "DS": "0"}
_NUMERIC = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "AT"}
_BYTES = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}
_TEXT = {"LO", "SH", "ST", "LT", "UT", "UC", "PN"}


@dataclass(frozen=True)
class DeidSummary:
    """What :func:`deidentify_tree` did; ``skipped`` and ``refused`` name each file left out and why."""

    out_dir: str
    edition: str
    options: dict[str, bool]
    files: int
    written: int
    patients: int
    series: int
    skipped: tuple[tuple[str, str], ...]
    refused: tuple[tuple[str, str], ...]
    actions: dict[str, int]
    private_removed: int
    audit_log: str
    reid_table: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _File:
    """Per-file state: the key, the options, and what was done."""

    key: bytes
    profile: Profile
    options: Options
    shift: int
    tokens: re.Pattern | None
    uids: dict[str, str]
    done: list[str] = field(default_factory=list)
    actions: Counter = field(default_factory=Counter)


def _resolve(action: str, vr: str) -> str:
    if action == "X/Z/U*":
        return "U" if vr == "UI" else "Z"
    return "D" if "D" in action.split("/") else ("Z" if action == "X/Z" else action)


def _uid(f: _File, value: str) -> str:
    new = pseudo_uid(f.key, value)
    f.uids[new] = str(value)
    return new


def _uids(f: _File, elem) -> None:
    """Replace each UID value by its keyed pseudonym; UIDs the standard registers (SOP classes, ...) are kept."""
    if not elem.is_empty:
        _set(elem, [v if str(v) in UID_dictionary else _uid(f, v) for v in _values(elem)])


def _items(f: _File, elem, where: str) -> None:
    for i, item in enumerate(elem.value):
        _apply(f, item, f"{where}{elem.keyword}[{i}].")


def _shift(value: str, vr: str, days: int) -> str:
    import datetime as dt

    if vr == "TM" or not value:
        return value
    head, tail = value[:8], value[8:]
    day = dt.datetime.strptime(head, "%Y%m%d").date() + dt.timedelta(days=days)
    return day.strftime("%Y%m%d") + tail


def _values(elem) -> list:
    return list(elem.value) if elem.VM > 1 else [elem.value]


def _set(elem, values: list) -> None:
    elem.value = values if len(values) > 1 else values[0]


def _clean(f: _File, ds: Dataset, elem, where: str) -> None:
    vr = elem.VR
    if vr != "SQ" and elem.is_empty:
        return
    if vr == "SQ":
        _items(f, elem, where)
    elif vr in ("DA", "DT", "TM") and f.options.retain_modified_dates:
        try:
            _set(elem, [_shift(str(v), vr, f.shift) for v in _values(elem)])
        except ValueError:
            del ds[elem.tag]  # an unparseable date cannot be shifted: removed (noted in the audit)
            f.done.append(f"{where}{elem.keyword}: X (unparseable date)")
    elif vr in _TEXT and elem.value not in (None, "") and f.tokens is not None:
        _set(elem, [f.tokens.sub("*", str(v)) for v in _values(elem)])


def _dummy(f: _File, elem, where: str) -> None:
    vr = elem.VR
    if vr == "SQ":
        _items(f, elem, where)
    elif vr == "UI":
        _uids(f, elem)
    elif elem.tag == 0x00100020:  # Patient ID: the keyed pseudonym
        elem.value = pseudo_patient(f.key, elem.value or "")
    elif vr in _STRING_DUMMY:
        elem.value = _STRING_DUMMY[vr]
    elif vr in _NUMERIC:
        elem.value = 0
    elif vr in _BYTES:
        elem.value = b"\0\0"
    else:
        elem.value = "ANONYMIZED"


def _apply(f: _File, ds: Dataset, where: str = "") -> None:
    """Apply the profile to every listed attribute of ``ds`` and, recursively, of its sequences' items."""
    for elem in list(ds):
        if elem.tag.is_private:
            continue  # removed afterwards, all at once
        action = f.profile.action(int(elem.tag), f.options)
        if action is None:
            if elem.VR == "UI" and any(str(v) not in UID_dictionary for v in _values(elem) if v):
                action = "U"  # a UID the profile does not list: an instance UID is an identifier
            else:
                if elem.VR == "SQ":
                    _items(f, elem, where)
                continue
        act = _resolve(action, elem.VR)
        if act == "X":
            del ds[elem.tag]
        elif act == "Z":
            elem.value = Sequence([]) if elem.VR == "SQ" else None
        elif act == "D":
            _dummy(f, elem, where)
        elif act == "U":
            _uids(f, elem) if elem.VR == "UI" else _dummy(f, elem, where)
        elif act == "C":
            _clean(f, ds, elem, where)
        elif act == "K" and elem.VR == "SQ":
            _items(f, elem, where)
        name = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
        f.done.append(f"{where}{name}: {act}" + (f" (profile {action})" if act != action else ""))
        f.actions[act] += 1


def _identifying_tokens(ds: Dataset, profile: Profile) -> re.Pattern | None:
    """A pattern for the file's own names, IDs and dates (what Clean Descriptors scrubs), plus long digit runs."""
    found: set[str] = set()
    for elem in ds.iterall():
        tag = int(elem.tag)
        if elem.VR not in ("PN", "LO", "SH", "DA", "DT", "CS", "AE") or tag in profile.descriptors:
            continue
        if profile.action(tag, Options()) is None or elem.value in (None, ""):
            continue
        for v in _values(elem):
            for token in re.split(r"[\^=\s,]+", str(v)):
                if len(token) >= 3:
                    found.add(token)
                    if re.fullmatch(r"\d{8}", token):  # a date: also its usual written forms
                        y, m, d = token[:4], token[4:6], token[6:]
                        found.update({f"{y}-{m}-{d}", f"{d}/{m}/{y}", f"{m}/{d}/{y}", f"{d}.{m}.{y}"})
    alternatives = sorted((re.escape(t) for t in found), key=len, reverse=True) + [r"\d{5,}"]
    return re.compile(r"(?<![\w])(?:" + "|".join(alternatives) + r")(?![\w])", re.IGNORECASE)


def _method(options: Options, edition: str) -> tuple[list[str], list[Any]]:
    used = [("Basic Profile", codes.DCM.BasicApplicationConfidentialityProfile)]
    if options.retain_modified_dates:
        used.append(("Modified Dates", codes.DCM.RetainLongitudinalTemporalInformationModifiedDatesOption))
    if options.retain_patient_characteristics:
        used.append(("Patient Characteristics", codes.DCM.RetainPatientCharacteristicsOption))
    if options.clean_descriptors:
        used.append(("Clean Descriptors", codes.DCM.CleanDescriptorsOption))
    text = [f"PS3.15 E.1-1 {edition} privmed keyed"] + [name for name, _ in used[1:]]
    return text, [c for _, c in used]


def deidentify_dataset(
    ds: Dataset,
    *,
    key: bytes,
    options: Options = Options(),
    profile: Profile | None = None,
    uids: dict[str, str] | None = None,
) -> tuple[list[str], Counter]:
    """De-identify ``ds`` in place; returns the audit lines (attribute: action) and the action counts.

    ``uids`` collects new UID -> original UID (for the re-identification table).
    """
    profile = profile or load_profile()
    patient = str(ds.get("PatientID", "") or "")
    f = _File(
        key=key,
        profile=profile,
        options=options,
        shift=day_shift(key, patient),
        tokens=_identifying_tokens(ds, profile),
        uids={} if uids is None else uids,
    )
    _apply(f, ds)
    if "PatientID" not in ds:
        ds.PatientID = pseudo_patient(key, patient)
    n_private = sum(1 for e in ds.iterall() if e.tag.is_private)
    ds.remove_private_tags()
    if n_private:
        f.done.append(f"private attributes: X ({n_private})")
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID") or _uid(f, meta.MediaStorageSOPInstanceUID)
        f.done.append("MediaStorageSOPInstanceUID: U")
    text, used = _method(options, profile.edition)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = text
    ds.DeidentificationMethodCodeSequence = Sequence([_code_item(c) for c in used])
    ds.LongitudinalTemporalInformationModified = "MODIFIED" if options.retain_modified_dates else "REMOVED"
    f.actions["private"] += n_private
    return f.done, f.actions


def _code_item(code: Any) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return item


def _burned_in(ds: Dataset) -> str | None:
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        return "Burned In Annotation is YES"
    if str(ds.get("Modality", "")).upper() in BURNED_IN_MODALITIES:
        return f"modality {ds.Modality} often carries burned-in text"
    return None


def _read(path: Path) -> tuple[Dataset | None, str]:
    """The dataset, or None and why it is not a de-identifiable DICOM file.

    A dataset without the Part 10 preamble and file meta (older archives) is
    read too, and given file meta so that its output is a Part 10 file.
    """
    try:
        try:
            ds = pydicom.dcmread(path)
        except pydicom.errors.InvalidDicomError:
            ds = pydicom.dcmread(path, force=True)
            _add_file_meta(ds)
        list(ds.iterall())  # parse every element now, so a truncated file fails here, not half-written
    except Exception as exc:  # noqa: BLE001 - any unreadable file is named and skipped, never fatal
        return None, f"not a readable DICOM file ({type(exc).__name__}: {str(exc)[:160]})"
    if str(ds.get("SOPClassUID", "")) == "1.2.840.10008.1.3.10" or "DirectoryRecordSequence" in ds:
        return None, "a DICOMDIR (it indexes patient names); rebuild one from the output if needed"
    if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
        return None, "not a DICOM instance (no SOP Class or SOP Instance UID; truncated, or not DICOM at all)"
    if "Image" in UID(ds.SOPClassUID).name:
        if "PixelData" not in ds:
            return None, "an image without Pixel Data (truncated file?)"
        syntax = ds.file_meta.get("TransferSyntaxUID")
        if syntax is not None and not syntax.is_compressed:
            samples = 2 if ds.get("PhotometricInterpretation") == "YBR_FULL_422" else int(ds.get("SamplesPerPixel", 1))
            need = (
                int(ds.get("Rows", 0))
                * int(ds.get("Columns", 0))
                * samples
                * int(ds.get("BitsAllocated", 8))
                // 8
                * int(ds.get("NumberOfFrames", 1) or 1)
            )
            if len(ds.PixelData) < need:
                return None, f"Pixel Data holds {len(ds.PixelData)} bytes, its size needs {need} (truncated file)"
    return ds, ""


def _add_file_meta(ds: Dataset) -> None:
    """File meta for a dataset read without it (transfer syntax from how it was encoded)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    implicit, little = ds.original_encoding
    meta = ds.file_meta if getattr(ds, "file_meta", None) is not None else FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
        )
    if "SOPClassUID" in ds and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta = meta


def _check_dirs(in_dir: Path, out_dir: Path) -> None:
    if not in_dir.is_dir():
        raise PrivmedError(f"input folder {in_dir} not found")
    a, b = in_dir.resolve(), out_dir.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise PrivmedError(
            f"output folder {out_dir} must be outside the input folder {in_dir} (and not contain it): inputs are "
            "never modified"
        )


class _LeftOut(Exception):
    def __init__(self, status: str, why: str) -> None:
        super().__init__(why)
        self.status, self.why = status, why


def deidentify_tree(
    in_dir: str | Path,
    out_dir: str | Path,
    *,
    key_file: str | Path,
    options: Options = Options(),
    allow_burned_in: bool = False,
    reid_table: str | Path | None = None,
    edition: str = EDITION,
) -> DeidSummary:
    """De-identify every DICOM file under ``in_dir`` into ``out_dir``; see the module docstring.

    ``allow_burned_in`` writes files flagged for burned-in annotation (their
    pixels are not cleaned); ``reid_table`` writes the encrypted
    re-identification table there (merged with an existing one). A file that
    cannot be read, de-identified or written is named in the summary and the
    audit log, and the run goes on.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    _check_dirs(in_dir, out_dir)
    key = load_key(key_file)
    profile = load_profile(edition)
    audit_path = out_dir.with_name(out_dir.name + ".deid-audit.jsonl")
    left_out: dict[str, list[tuple[str, str]]] = {"skipped": [], "refused": []}
    written: dict[Path, str] = {}
    patients: dict[str, str] = {}
    series: set[str] = set()
    actions: Counter = Counter()
    uids: dict[str, str] = {}

    def one(path: Path, rel: str) -> dict[str, Any]:
        ds, why = _read(path)
        if ds is None:
            raise _LeftOut("skipped", why)
        flag = None if allow_burned_in else _burned_in(ds)
        if flag:
            raise _LeftOut(
                "refused",
                f"{flag}; pixel data are not cleaned: pass allow_burned_in (--allow-burned-in) after checking the "
                "pixels",
            )
        original_pid = str(ds.get("PatientID", "") or "")
        done, counts = deidentify_dataset(ds, key=key, options=options, profile=profile, uids=uids)
        pid, series_uid = str(ds.PatientID), str(ds.get("SeriesInstanceUID", "") or "no-series")
        dest = out_dir / pid / series_uid / f"{ds.SOPInstanceUID}.dcm"
        if dest in written:
            raise _LeftOut("skipped", f"same SOP Instance UID as {written[dest]}; not written twice")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            ds.save_as(dest, enforce_file_format=True)  # a Part 10 file, whatever the input was
        except Exception:
            dest.unlink(missing_ok=True)
            raise
        written[dest], patients[pid] = rel, original_pid
        series.add(series_uid)
        actions.update(counts)
        return {
            "status": "written",
            "out": str(dest.relative_to(out_dir)),
            "burned_in": _burned_in(ds),
            "actions": done,
        }

    files = sorted(p for p in in_dir.rglob("*") if p.is_file())
    out_dir.mkdir(parents=True, exist_ok=True)
    with audit_path.open("w") as audit:
        for path in files:
            rel = str(path.relative_to(in_dir))
            try:
                record = one(path, rel)
            except _LeftOut as e:
                record = {"status": e.status, "why": e.why}
            except Exception as exc:  # noqa: BLE001 - one bad file is named and skipped, never fatal
                record = {"status": "skipped", "why": f"failed ({type(exc).__name__}: {str(exc)[:160]})"}
            if record["status"] != "written":
                left_out[record["status"]].append((rel, record["why"]))
            audit.write(json.dumps({"file": rel, **record}) + "\n")
    table = None
    if reid_table is not None:
        table = str(write_reid_table(reid_table, {"patients": patients, "uids": uids}, key=key))
    private = actions.pop("private", 0)
    summary = DeidSummary(
        out_dir=str(out_dir),
        edition=profile.edition,
        options=asdict(options) | {"allow_burned_in": allow_burned_in},
        files=len(files),
        written=len(written),
        patients=len(patients),
        series=len(series),
        skipped=tuple(left_out["skipped"]),
        refused=tuple(left_out["refused"]),
        actions=dict(sorted(actions.items())),
        private_removed=private,
        audit_log=str(audit_path),
        reid_table=table,
    )
    out_dir.with_name(out_dir.name + ".deid-summary.json").write_text(json.dumps(summary.to_dict(), indent=2))
    return summary
