"""DICOM PS3.15 Annex E, Table E.1-1, as data: which action applies to which attribute.

The Basic Application Level Confidentiality Profile column is not typed here:
it is read from the machine-readable tables that ``dicom-anonymizer``
(KitwareMedical, BSD) maintains from the standard, edition **2026c** by default
(``dicomfields_2026c``; 652 attributes plus 3 repeating-group masks: curve
data 50xx, overlay data and comments 60xx). That table lists each attribute
under one action: D (dummy), Z (zero length), X (remove), U (replace UID) or a
combination (Z/D, X/Z, X/D, X/Z/D, X/Z/U*).

It does not carry the columns of the profile's options, so three of them are
derived here, and each derivation was checked against a parsed Table E.1-1 of
an older edition (the Innolitics ``dicom-standard`` extraction, early 2025,
whose Basic column agrees with dicom-anonymizer's 2026c on all 617 attributes
the two share):

- Retain Longitudinal Temporal Information with Modified Dates: C (modify)
  for every listed attribute whose VR is DA, DT or TM, except Patient's Birth
  Date and Time and GPS Time Stamp (as in the standard). This gives 162 of
  that column's 165 rows and no other; the three it misses
  (Certified Timestamp and Frame Origin Timestamp, both OB, and Timezone
  Offset From UTC) keep their Basic action (removed).
- Retain Patient Characteristics: 13 rows, typed below from the standard.
- Clean Descriptors: C for listed text (LO, SH, ST, LT, UT, UC) or sequence
  attributes whose keyword names a description, comment, reason, history,
  diagnosis, label, ... (:data:`_DESCRIPTOR`), minus device, institution and
  station names. This rule finds 101 of the column's 125 rows, and one row
  newer than that edition (Acquisition Context Description); the 24 it
  misses (e.g. Protocol Name, ROI Name, Selector * Value) keep their Basic
  action, i.e. are removed or emptied: the rule errs towards removing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from pydicom.datadict import dictionary_keyword, dictionary_VR, tag_for_keyword

from privmed.errors import PrivmedError

EDITION = "2026c"
_CATEGORIES = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}

# Retain Patient Characteristics Option column of Table E.1-1 (K keep, C clean).
PATIENT_CHARACTERISTICS = {
    "PatientAge": "K",
    "PatientSex": "K",
    "PatientSize": "K",
    "PatientWeight": "K",
    "EthnicGroup": "K",
    "SmokingStatus": "K",
    "PregnancyStatus": "K",
    "PatientSexNeutered": "K",
    "SelectorASValue": "K",
    "Allergies": "C",
    "PatientState": "C",
    "PreMedication": "C",
    "SpecialNeeds": "C",
}
_DESCRIPTOR = re.compile(
    r"Description|Comments|Reason|History|Diagnos|Allerg|Alert|Impressions|Purpose|Instructions"
    r"|Agent|Label|Narrative|Occupation|PatientState|TreatmentSite"
)
_NOT_DESCRIPTOR = re.compile(
    r"Device|Institution|Station|Owner|Constraint|Channel|Multiplex|Detector|Modified"
    r"|ImagePresentationComments|TextComments"
)
_TEXT_VRS = {"LO", "SH", "ST", "LT", "UT", "UC", "SQ"}
_NOT_SHIFTED = {"PatientBirthDate", "PatientBirthTime", "GPSTimeStamp"}


@dataclass(frozen=True)
class Options:
    """The profile options privmed implements (PS3.15 E.3), each off by default."""

    retain_modified_dates: bool = False  # Retain Longitudinal Temporal Information with Modified Dates
    retain_patient_characteristics: bool = False
    clean_descriptors: bool = False


@dataclass(frozen=True)
class Profile:
    """Basic actions by tag, repeating-group masks, and the option columns."""

    edition: str
    basic: dict[int, str]
    masks: tuple[tuple[int, int, int, int, str], ...]  # (group, element, group mask, element mask, action)
    dates: dict[int, str]
    patient: dict[int, str]
    descriptors: dict[int, str]

    def action(self, tag: int, options: Options) -> str | None:
        """The action for ``tag`` under ``options`` (an option's column supersedes the Basic one); None if unlisted."""
        basic = self.basic.get(tag)
        if basic is None:
            for g, e, gm, em, act in self.masks:
                if (tag >> 16) & gm == g and (tag & 0xFFFF) & em == e:
                    basic = act
                    break
        if basic is None:
            return None
        if options.retain_patient_characteristics and tag in self.patient:
            return self.patient[tag]
        if options.retain_modified_dates and tag in self.dates:
            return self.dates[tag]
        if options.clean_descriptors and tag in self.descriptors:
            return "C"
        return basic


def _vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return ""


def _keyword(tag: int) -> str:
    try:
        return dictionary_keyword(tag)
    except KeyError:
        return ""


@lru_cache(maxsize=4)
def load_profile(edition: str = EDITION) -> Profile:
    """Table E.1-1 of ``edition`` (one dicom-anonymizer ships: 2023, 2024b, 2026c)."""
    from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector

    try:
        table = dicom_anonymization_database_selector(f"dicomfields_{edition}")
    except ValueError:
        raise PrivmedError(
            f"no PS3.15 Annex E table for edition {edition!r} in dicom-anonymizer; try {EDITION}"
        ) from None
    basic: dict[int, str] = {}
    masks = []
    for category, action in _CATEGORIES.items():
        for entry in table[category]:
            if len(entry) == 2:
                basic[(entry[0] << 16) | entry[1]] = action
            else:
                masks.append((*entry, action))
    dates = {t: "C" for t in basic if _vr(t) in ("DA", "DT", "TM") and _keyword(t) not in _NOT_SHIFTED}
    patient = {tag_for_keyword(k): a for k, a in PATIENT_CHARACTERISTICS.items()}
    descriptors = {
        t: "C"
        for t in basic
        if _vr(t) in _TEXT_VRS and _DESCRIPTOR.search(_keyword(t)) and not _NOT_DESCRIPTOR.search(_keyword(t))
    }
    return Profile(
        edition=edition, basic=basic, masks=tuple(masks), dates=dates, patient=patient, descriptors=descriptors
    )
