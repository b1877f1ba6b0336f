"""The shape of a received data set, checked before it is acknowledged: every element's declared
length fits in what arrived, every undefined-length sequence, item and encapsulated Pixel Data is
terminated, and sequences nest no deeper than ``MAX_DEPTH``. No value is decoded: the walk reads
only tags, VRs and lengths, so a Pixel Data element is skipped by its length.

Without it a data set that claims 2 GB of Pixel Data with 20 bytes present was acknowledged, and
a 10,000-level nested sequence after the indexed attributes was stored, then crashed its job with
RecursionError on every attempt.
"""

from __future__ import annotations

import struct

from pydicom.datadict import dictionary_VR
from pydicom.valuerep import VR

MAX_DEPTH = 16  # real objects nest 3-5 deep (SEG, enhanced MR per-frame groups, SR trees)
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT"}
LONG_VRS |= {b"UV"}
KNOWN_VRS = {v.value.encode() for v in VR if len(v.value) == 2}


PIXEL_REPRESENTATION = 0x00280103
# a value of these VRs is a whole number of fixed-size numbers (PS3.5 6.2)
VALUE_SIZES = {b"AT": 4, b"FD": 8, b"FL": 4, b"SL": 4, b"SS": 2, b"UL": 4, b"US": 2, b"SV": 8}
VALUE_SIZES |= {b"UV": 8, b"OD": 8, b"OF": 4, b"OL": 4, b"OV": 8, b"OW": 2}
AMBIGUOUS_BY_PIXEL_REPRESENTATION = {"US or SS", "US or SS or OW"}


def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return ""


class StructureError(ValueError):
    """What is wrong and where; short enough for a C-STORE Error Comment (LO, 64 chars)."""


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class _Walk:
    def __init__(self, buf: memoryview, *, little: bool) -> None:
        self.buf = buf
        self.implicit_tags: set[int] = set()  # elements whose VR the data set does not say
        e = "<" if little else ">"
        self.tag_length = struct.Struct(f"{e}HHL")
        self.short_length = struct.Struct(f"{e}H")
        self.long_length = struct.Struct(f"{e}L")

    def header(self, pos: int, end: int) -> tuple[int, int]:
        if pos + 8 > end:
            raise StructureError(f"element header cut short at byte {pos}")
        group, element, length = self.tag_length.unpack_from(self.buf, pos)
        return group << 16 | element, length

    def element(self, pos: int, end: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
        """(tag, VR or None, value length, value position) of the element at ``pos``."""
        tag, length = self.header(pos, end)
        if implicit or tag >> 16 == 0xFFFE:
            return tag, None, length, pos + 8
        vr = bytes(self.buf[pos + 4 : pos + 6])
        if vr not in KNOWN_VRS:
            raise StructureError(f"{_tag(tag)} has no known VR ({vr!r})")
        if vr not in LONG_VRS:
            return tag, vr, self.short_length.unpack_from(self.buf, pos + 6)[0], pos + 8
        if pos + 12 > end:
            raise StructureError(f"{_tag(tag)} header cut short")
        return tag, vr, self.long_length.unpack_from(self.buf, pos + 8)[0], pos + 12

    def elements(self, pos: int, end: int, depth: int, *, in_item: bool, implicit: bool) -> int:
        """The elements from ``pos`` to ``end``, or to the item delimiter when ``in_item``."""
        while pos < end:
            tag, vr, length, pos = self.element(pos, end, implicit)
            if vr is None or tag == PIXEL_REPRESENTATION:
                self.implicit_tags.add(tag)
            if tag == ITEM_END and in_item:
                return pos
            if tag >> 16 == 0xFFFE:
                raise StructureError(f"unexpected delimiter {_tag(tag)} at byte {pos - 8}")
            if length == UNDEFINED:
                pos = self.undefined_length(tag, vr, pos, end, depth, implicit=implicit)
            else:
                pos = self.defined_length(tag, vr, length, pos, end, depth=depth, implicit=implicit)
        if in_item:
            raise StructureError("item without its delimiter")
        return pos

    def undefined_length(
        self, tag: int, vr: bytes | None, pos: int, end: int, depth: int, *, implicit: bool
    ) -> int:
        """Encapsulated Pixel Data, or a sequence (SQ, or UN: PS3.5 6.2.2); where it ends."""
        if tag == PIXEL_DATA:
            return self.fragments(pos, end)
        if vr not in (None, b"SQ", b"UN"):
            raise StructureError(f"{_tag(tag)} {vr!r} of undefined length")
        # an undefined-length UN is a sequence in Implicit VR Little Endian (PS3.5 6.2.2)
        return self.sequence(
            tag, pos, end, depth + 1, undefined=True, implicit=implicit or vr == b"UN"
        )

    def defined_length(
        self,
        tag: int,
        vr: bytes | None,
        length: int,
        pos: int,
        end: int,
        *,
        depth: int,
        implicit: bool,
    ) -> int:
        """A value of ``length`` bytes: within what arrived, a whole number of values, and
        walked when it is a sequence; where it ends."""
        if pos + length > end:
            raise StructureError(f"{_tag(tag)} declares {length} bytes, {end - pos} left")
        size = VALUE_SIZES.get(vr or _dictionary_vr(tag).encode(), 1)
        if length % size:
            raise StructureError(f"{_tag(tag)} {vr!r}: {length} bytes, not a multiple of {size}")
        if vr == b"SQ" or (vr is None and self._dictionary_sq(tag)):
            self.sequence(tag, pos, pos + length, depth + 1, undefined=False, implicit=implicit)
        return pos + length

    @staticmethod
    def _dictionary_sq(tag: int) -> bool:
        try:
            return dictionary_VR(tag) == "SQ"
        except KeyError:
            return False

    def sequence(
        self, tag: int, pos: int, end: int, depth: int, *, undefined: bool, implicit: bool
    ) -> int:
        if depth > MAX_DEPTH:
            raise StructureError(f"sequences nested deeper than {MAX_DEPTH}")
        while pos < end:
            item, length = self.header(pos, end)
            if item == SEQUENCE_END and undefined:
                return pos + 8
            if item != ITEM:
                raise StructureError(f"{_tag(tag)}: {_tag(item)} where an item belongs")
            pos += 8
            if length == UNDEFINED:
                pos = self.elements(pos, end, depth, in_item=True, implicit=implicit)
                continue
            if pos + length > end:
                raise StructureError(f"{_tag(tag)} item declares {length} bytes, {end - pos} left")
            self.elements(pos, pos + length, depth, in_item=False, implicit=implicit)
            pos += length
        if undefined:
            raise StructureError(f"{_tag(tag)} without its sequence delimiter")
        return pos

    def fragments(self, pos: int, end: int) -> int:
        while pos < end:
            item, length = self.header(pos, end)
            if item == SEQUENCE_END:
                return pos + 8
            if item != ITEM or length == UNDEFINED:
                raise StructureError(f"(7FE0,0010): {_tag(item)} where a fragment belongs")
            if pos + 8 + length > end:
                raise StructureError(
                    f"(7FE0,0010) fragment declares {length} bytes, {end - pos - 8} left"
                )
            pos += 8 + length
        raise StructureError("(7FE0,0010) without its sequence delimiter")


def check(buf: bytes | memoryview, *, implicit: bool, little: bool) -> None:
    """Raises ``StructureError`` if ``buf`` (a data set, no file meta) is not whole."""
    view = memoryview(buf)
    walk = _Walk(view, little=little)
    walk.elements(0, len(view), 0, in_item=False, implicit=implicit)
    if PIXEL_REPRESENTATION not in walk.implicit_tags:
        # without the VR in the data, US-or-SS elements are read by PixelRepresentation
        for tag in sorted(walk.implicit_tags):
            if tag >> 16 != 0xFFFE and _dictionary_vr(tag) in AMBIGUOUS_BY_PIXEL_REPRESENTATION:
                raise StructureError(f"{_tag(tag)} is US or SS, and no PixelRepresentation")
