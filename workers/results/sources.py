"""⑤b Tolerant reading, strict writing: source attributes made safe to copy into a result.

highdicom copies the Patient, Study and equipment attributes of the source into every SEG, SR
and Parametric Map, and validates them strictly. Real scanners write values that fail that (a
StudyDate of ``***``, an SH of 40 characters, a PatientBirthDate encoded with VR LO). Before a
result is built, each top-level attribute of the in-memory source is checked against its VR in
the data dictionary: a value over the VR's length is cut to it, a value the VR cannot hold is
dropped (the attribute kept empty, as Type 2 allows), and each repair is noted (attribute names
only: never the values, which may be PHI).
The stored instance is never changed.
"""

from __future__ import annotations

from pydicom import config
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import MAX_VALUE_LEN, validate_value

# sequences, bulk and binary numbers: nothing a text value can break
_SKIP_VRS = {"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN", "UT", "UR"}
_SKIP_VRS |= {"US", "SS", "UL", "SL", "FL", "FD", "AT", "SV", "UV"}


def _text(v: object) -> str:
    """The value as encoded (DS and IS keep their original string)."""
    return str(getattr(v, "original_string", None) or v)


def _valid(vr: str, value: object) -> bool:
    values = value if isinstance(value, list | MultiValue) else [value]
    try:
        for v in values:
            validate_value(vr, _text(v), config.RAISE)
    except (ValueError, TypeError):
        return False
    return True


def _cut(vr: str, value: object) -> object:
    limit = MAX_VALUE_LEN.get(vr)
    if limit is None:
        return value
    if isinstance(value, list | MultiValue):
        return [_text(v)[:limit] for v in value]
    return _text(value)[:limit]


def repair(ds: Dataset) -> list[str]:
    """Repair ``ds`` (a source read into memory) in place; one note per attribute touched."""
    notes = []
    for original in list(ds):
        elem = original
        if elem.tag.is_private or elem.tag.group == 0x0002 or elem.VR in _SKIP_VRS:
            continue
        try:
            wanted = dictionary_VR(elem.tag)
        except KeyError:
            continue
        name = elem.keyword or str(elem.tag)
        if elem.value is None or elem.value == "":
            continue
        if " or " not in wanted and wanted != elem.VR:
            if wanted in _SKIP_VRS or not _valid(wanted, elem.value):
                ds[elem.tag] = DataElement(elem.tag, wanted, None)
                notes.append(f"{name}: encoded as VR {elem.VR}, not {wanted}: value dropped")
                continue
            ds[elem.tag] = DataElement(elem.tag, wanted, elem.value)
            notes.append(f"{name}: encoded as VR {elem.VR}, re-read as {wanted}")
            elem = ds[elem.tag]
        if _valid(elem.VR, elem.value):
            continue
        cut = _cut(elem.VR, elem.value)
        if cut != elem.value and _valid(elem.VR, cut):
            elem.value = cut
            notes.append(f"{name}: longer than VR {elem.VR} allows: cut to its maximum length")
        else:
            ds[elem.tag] = DataElement(elem.tag, elem.VR, None)
            notes.append(f"{name}: not a valid {elem.VR} value: value dropped")
    return notes
