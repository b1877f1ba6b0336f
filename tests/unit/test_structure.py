"""The shape check a data set passes before it is acknowledged (``dicom_node.storage.structure``),
on bytes built element by element: what is whole passes, and each way of being cut short,
unterminated, too deep or inconsistent is refused with the tag and what is wrong."""

from __future__ import annotations

import struct

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import dsutils

from dicom_node.storage.structure import MAX_DEPTH, StructureError, check

ITEM, ITEM_END, SEQ_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)
UNDEFINED = 0xFFFFFFFF
LONG = {"OB", "OW", "SQ", "UN", "UT", "UC", "UR", "OD", "OF", "OL", "OV", "SV", "UV"}


def explicit(group: int, element: int, vr: str, value: bytes, length: int | None = None) -> bytes:
    n = len(value) if length is None else length
    if vr in LONG:
        return struct.pack("<HH2sHL", group, element, vr.encode(), 0, n) + value
    return struct.pack("<HH2sH", group, element, vr.encode(), n) + value


def implicit(group: int, element: int, value: bytes, length: int | None = None) -> bytes:
    return struct.pack("<HHL", group, element, len(value) if length is None else length) + value


def delimiter(tag: tuple[int, int], length: int = 0) -> bytes:
    return struct.pack("<HHL", *tag, length)


def item(body: bytes, *, undefined: bool = False) -> bytes:
    if undefined:
        return delimiter(ITEM, UNDEFINED) + body + delimiter(ITEM_END)
    return delimiter(ITEM, len(body)) + body


def ok(buf: bytes, *, implicit_vr: bool = False, little: bool = True) -> None:
    check(buf, implicit=implicit_vr, little=little)


def refused(buf: bytes, *, implicit_vr: bool = False) -> str:
    with pytest.raises(StructureError) as caught:
        check(buf, implicit=implicit_vr, little=True)
    message = str(caught.value)
    assert len(message) <= 64  # it is the C-STORE's Error Comment (LO)
    return message


PATIENT_NAME = explicit(0x0010, 0x0010, "PN", b"Doe^J ")
ROWS = explicit(0x0028, 0x0010, "US", struct.pack("<H", 512))


def test_what_pydicom_writes_is_whole_in_every_encoding() -> None:
    ds = Dataset()
    ds.PatientName = "Doe^J"
    ds.Rows = 4
    ds.PixelRepresentation = 0
    inner = Dataset()
    inner.CodeValue = "T-D1100"
    ds.AnatomicRegionSequence = Sequence([inner])
    ds.BitsAllocated = 16
    ds.PixelData = b"\0" * 32
    for implicit_vr, little in ((False, True), (True, True), (False, False)):
        encoded = dsutils.encode(ds, implicit_vr, little)
        assert encoded is not None
        ok(encoded, implicit_vr=implicit_vr, little=little)


def test_an_empty_data_set_is_whole() -> None:
    ok(b"")


def test_an_element_header_cut_short_is_refused_with_the_byte() -> None:
    assert (
        refused(PATIENT_NAME + b"\x10\x00\x20")
        == f"element header cut short at byte {len(PATIENT_NAME)}"
    )


def test_a_value_longer_than_what_arrived_is_refused() -> None:
    huge = explicit(0x7FE0, 0x0010, "OB", b"\0" * 20, length=2_000_000_000)
    assert refused(PATIENT_NAME + huge) == "(7FE0,0010) declares 2000000000 bytes, 20 left"


def test_an_unknown_vr_is_refused() -> None:
    assert refused(explicit(0x0010, 0x0010, "ZZ", b"ab")) == "(0010,0010) has no known VR (b'ZZ')"


def test_a_long_vr_header_cut_short_is_refused() -> None:
    assert (
        refused(struct.pack("<HH2sH", 0x7FE0, 0x0010, b"OB", 0)) == "(7FE0,0010) header cut short"
    )


def test_numbers_must_fill_whole_values() -> None:
    assert refused(explicit(0x0028, 0x0010, "US", b"\x01\x02\x03")) == (
        "(0028,0010) b'US': 3 bytes, not a multiple of 2"
    )


def test_an_undefined_length_sequence_needs_its_delimiter() -> None:
    seq = explicit(0x0008, 0x1140, "SQ", b"", length=UNDEFINED) + item(PATIENT_NAME)
    assert refused(seq) == "(0008,1140) without its sequence delimiter"
    ok(seq + delimiter(SEQ_END))


def test_an_undefined_length_item_needs_its_delimiter() -> None:
    body = explicit(0x0008, 0x1140, "SQ", b"", length=UNDEFINED)
    body += delimiter(ITEM, UNDEFINED) + PATIENT_NAME
    assert refused(body) == "item without its delimiter"
    ok(body + delimiter(ITEM_END) + delimiter(SEQ_END))


def test_something_else_where_an_item_belongs_is_refused() -> None:
    seq = explicit(0x0008, 0x1140, "SQ", PATIENT_NAME)
    assert refused(seq) == "(0008,1140): (0010,0010) where an item belongs"


def test_an_item_longer_than_its_sequence_is_refused() -> None:
    seq = explicit(0x0008, 0x1140, "SQ", delimiter(ITEM, 100) + PATIENT_NAME)
    assert refused(seq) == f"(0008,1140) item declares 100 bytes, {len(PATIENT_NAME)} left"


def test_a_stray_delimiter_is_refused() -> None:
    assert refused(PATIENT_NAME + delimiter(SEQ_END)) == (
        f"unexpected delimiter (FFFE,E0DD) at byte {len(PATIENT_NAME)}"
    )


def test_only_sq_and_un_may_have_undefined_length() -> None:
    assert refused(explicit(0x0010, 0x1010, "OB", b"", length=UNDEFINED)) == (
        "(0010,1010) b'OB' of undefined length"
    )


def test_an_undefined_length_un_is_walked_as_an_implicit_sequence() -> None:
    inner = implicit(0x0010, 0x0010, b"Doe^J ")
    un = explicit(0x0009, 0x1001, "UN", b"", length=UNDEFINED)
    ok(un + item(inner) + delimiter(SEQ_END))
    broken = un + delimiter(ITEM, 40) + inner
    assert "item declares 40 bytes" in refused(broken)


def nested(depth: int) -> bytes:
    body = PATIENT_NAME
    for _ in range(depth):
        body = explicit(0x0008, 0x1140, "SQ", item(body))
    return body


def test_sequences_nest_no_deeper_than_the_limit() -> None:
    ok(nested(MAX_DEPTH))
    assert refused(nested(MAX_DEPTH + 1)) == f"sequences nested deeper than {MAX_DEPTH}"


def test_a_ten_thousand_level_sequence_is_refused_without_recursing_that_deep() -> None:
    head = b""
    for _ in range(10_000):
        head += explicit(0x0008, 0x1140, "SQ", b"", length=UNDEFINED) + delimiter(ITEM, UNDEFINED)
    assert refused(head) == f"sequences nested deeper than {MAX_DEPTH}"


def encapsulated(*fragments: bytes, terminated: bool = True) -> bytes:
    body = b"".join(delimiter(ITEM, len(f)) + f for f in fragments)
    if terminated:
        body += delimiter(SEQ_END)
    return explicit(0x7FE0, 0x0010, "OB", b"", length=UNDEFINED) + body


def test_encapsulated_pixel_data_is_walked_fragment_by_fragment() -> None:
    ok(encapsulated(b"", b"\xff\xd8" + b"\0" * 98))
    assert refused(encapsulated(b"", b"\0" * 10, terminated=False)) == (
        "(7FE0,0010) without its sequence delimiter"
    )
    cut = encapsulated(b"")[:-8] + delimiter(ITEM, 500) + b"\0" * 10
    assert refused(cut) == "(7FE0,0010) fragment declares 500 bytes, 10 left"
    odd = encapsulated(b"")[:-8] + delimiter(ITEM_END)
    assert refused(odd) == "(7FE0,0010): (FFFE,E00D) where a fragment belongs"


def test_implicit_vr_us_or_ss_needs_its_pixel_representation() -> None:
    smallest = implicit(0x0028, 0x0106, b"\0\0")  # Smallest Image Pixel Value: US or SS
    assert (
        refused(smallest, implicit_vr=True) == "(0028,0106) is US or SS, and no PixelRepresentation"
    )
    ok(implicit(0x0028, 0x0103, b"\1\0") + smallest, implicit_vr=True)


def test_implicit_vr_sequences_are_known_from_the_dictionary() -> None:
    seq = implicit(0x0008, 0x1140, item(implicit(0x0008, 0x1150, b"1.2 ")))
    ok(seq, implicit_vr=True)
    assert "where an item belongs" in refused(implicit(0x0008, 0x1140, ROWS), implicit_vr=True)


def test_big_endian_lengths_are_read_big_endian() -> None:
    be = struct.pack(">HH2sH", 0x0028, 0x0010, b"US", 2) + struct.pack(">H", 512)
    ok(be, little=False)
    with pytest.raises(StructureError):
        check(be, implicit=False, little=True)  # read little-endian, the length is 512
