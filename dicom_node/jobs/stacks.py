"""Series -> stacks -> slice layout: what a series holds, before any pixel is decoded.

A series (or one enhanced multi-frame instance) may hold several stacks: a localizer, repeated
acquisitions at the same positions (time points, echoes, b-values), a second matrix size. As
dcm2niix does, frames are first grouped by what makes a volume impossible to share (orientation,
Rows x Columns, Pixel Spacing, Stack ID, a localizer or a mosaic), then each group is split only
as far as it must be to become consistent: unique slice positions along the normal and slice
origins on one line. The attributes that separate repeated acquisitions are tried in order
(``DISTINGUISHERS``); ContentTime / AcquisitionTime rank the frames at each position when
nothing else differs. Identical duplicates (same position, same pixel data) collapse into one,
with a note.

The layout of a consistent stack comes from the geometry alone: positions along the slice
normal, the gaps between them, and each frame's real extent along the normal (half the distance
to each neighbour; the one gap for the outer frames). A gap is contiguous when it is at most the
neighbouring slices' thickness (SliceThickness, or the local spacing when it is absent) times a
tolerance; a wider gap is a refusal that says where and by how much, unless the rule allows
interpolation across gaps up to ``interpolate_gaps_mm``.

Both sides use this module: the routing rules (④) choose stacks from the stored files' headers
(``series_stacks``), and the worker (⑤a) splits the decoded series the same way and runs on the
stack the job names. Duplicates are told apart by a digest of the stored pixel data bytes
(``pixel_digest``) on both sides, so both number the stacks alike.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

from dicom_node.domain import orientation_label
from dicom_node.errors import Permanent

ORIENTATION_TOLERANCE = 1e-3  # direction cosines: same orientation within this
POSITION_TOLERANCE_MM = 0.1  # two positions closer than this along the normal are one position
LINE_TOLERANCE_MM = 0.1  # a slice origin this far off the stack's line breaks the affine
RUN_TOLERANCE_MM = 0.01  # gaps this close are one spacing regime
GAP_TOLERANCE = 1.5  # default: a gap up to 1.5 x the slices' thickness is contiguous

# What separates repeated acquisitions at the same positions, tried in this order.
DISTINGUISHERS = (
    "TemporalPositionIdentifier",
    "TemporalPositionIndex",
    "AcquisitionNumber",
    "EchoNumbers",
    "EffectiveEchoTime",
    "DiffusionBValue",
    "DiffusionGradientOrientation",
    "ImageType",
)
TIME_KEYWORDS = ("ContentTime", "AcquisitionTime", "FrameAcquisitionDateTime")


class GeometryError(Permanent):
    """A stack cannot be one volume; the message names the stack, the rule and where."""


@dataclass(frozen=True, slots=True)
class FrameRef:
    sop_instance_uid: str
    frame_number: int | None  # 1-based, for multi-frame instances


@dataclass(frozen=True)
class FrameHeader:
    """One frame's geometry and the attributes that tell acquisitions apart (no pixels)."""

    ref: FrameRef
    instance_number: int | None
    position: np.ndarray  # ImagePositionPatient
    orientation: np.ndarray  # ImageOrientationPatient (6)
    shape: tuple[int, int]  # (Rows, Columns)
    spacing: tuple[float, float]  # PixelSpacing: (between rows, between columns)
    thickness: float | None  # SliceThickness
    image_type: tuple[str, ...]
    stack_id: str | None = None
    keys: dict[str, str] = field(default_factory=dict)  # DISTINGUISHERS present
    time: str | None = None
    mosaic: bool = False

    @property
    def where(self) -> str:
        """How an admin finds this frame: instance number (and frame), else the UID."""
        name = (
            f"instance {self.instance_number}"
            if self.instance_number is not None
            else self.ref.sop_instance_uid
        )
        return f"{name} frame {self.ref.frame_number}" if self.ref.frame_number else name


@dataclass(frozen=True)
class Stack:
    """Frames that can be one volume, sorted along the slice normal (unless ``refusal``)."""

    number: int  # 1-based within the series
    frames: tuple[FrameHeader, ...]
    distinguished_by: tuple[tuple[str, str], ...] = ()  # (attribute, value) that split it off
    notes: tuple[str, ...] = ()
    refusal: str | None = None

    @property
    def label(self) -> str:
        """How an admin reads the stack: number, orientation, matrix, frames, what sets it apart."""
        first = self.frames[0]
        rows, cols = first.shape
        parts = [
            f"stack {self.number}",
            (orientation_label(first.orientation) or "no orientation").lower(),
            f"{rows}x{cols}",
            f"{len(self.frames)} frame{'s' if len(self.frames) != 1 else ''}",
        ]
        if "LOCALIZER" in first.image_type:
            parts.append("localizer")
        parts += [f"{k} {v}" for k, v in self.distinguished_by]
        return ", ".join(parts)


@dataclass(frozen=True)
class Layout:
    """Where the slices of a consistent stack lie, from their positions alone."""

    normal: np.ndarray
    positions_mm: np.ndarray  # along the normal, ascending, one per frame
    extents_mm: np.ndarray  # each frame's real extent along the normal
    step: np.ndarray  # mean step between slice origins (the affine's third column)
    uniform: bool
    tilt_deg: float
    spacing: str  # e.g. "uniform 2.50 mm" or "23 x 4.00 mm + 1 x 5.10 mm + 17 x 7.00 mm"
    notes: tuple[str, ...] = ()


def _floats(value: Any, n: int, what: str, where: str) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise GeometryError(f"{where}: {what} missing or malformed") from exc
    if arr.shape != (n,):
        raise GeometryError(f"{where}: {what} has {arr.size} values, not {n}")
    return arr


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str | bytes | int | float):
        return str(value).strip() or None
    try:
        return "\\".join(str(v).strip() for v in value) or None
    except TypeError:
        return str(value)


def _number(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _image_type(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else list(value)
    return tuple(str(v).strip().upper() for v in values)


def _item(ds: Dataset, keyword: str) -> Dataset | None:
    seq = ds.get(keyword)
    return seq[0] if seq else None


def _is_mosaic(ds: Dataset, image_type: tuple[str, ...]) -> bool:
    return "MOSAIC" in image_type or (0x0019, 0x100A) in ds  # Siemens NumberOfImagesInMosaic


def read_headers(ds: Dataset) -> list[FrameHeader]:
    """Every frame's geometry: the top level of a single-frame instance, the shared and
    per-frame functional groups of a multi-frame one."""
    uid = str(ds.get("SOPInstanceUID", ""))
    number = _number(ds.get("InstanceNumber"))
    instance_number = int(number) if number is not None else None
    image_type = _image_type(ds.get("ImageType"))
    shape = (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))
    base_keys = {k: v for k in DISTINGUISHERS if (v := _text(ds.get(k))) is not None}
    base_time = next((t for k in TIME_KEYWORDS if (t := _text(ds.get(k)))), None)
    mosaic = _is_mosaic(ds, image_type)
    n_frames = int(_number(ds.get("NumberOfFrames")) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if n_frames == 1 and not per_frame:
        where = f"instance {instance_number}" if instance_number is not None else uid
        spacing = _floats(ds.get("PixelSpacing"), 2, "PixelSpacing", where)
        return [
            FrameHeader(
                ref=FrameRef(uid, None),
                instance_number=instance_number,
                position=_floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", where),
                orientation=_floats(
                    ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", where
                ),
                shape=shape,
                spacing=(float(spacing[0]), float(spacing[1])),
                thickness=_number(ds.get("SliceThickness")),
                image_type=image_type,
                keys=base_keys,
                time=base_time,
                mosaic=mosaic,
            )
        ]
    if not per_frame or len(per_frame) != n_frames:
        raise GeometryError(f"{uid}: multi-frame without per-frame functional groups: no geometry")
    shared = _item(ds, "SharedFunctionalGroupsSequence") or Dataset()
    return [
        _enhanced_frame(ds, groups, shared, i + 1, instance_number, image_type, mosaic)
        for i, groups in enumerate(per_frame)
    ]


def _enhanced_frame(  # noqa: PLR0917 - one frame's context, all from read_headers
    ds: Dataset,
    groups: Dataset,
    shared: Dataset,
    frame: int,
    instance_number: int | None,
    image_type: tuple[str, ...],
    mosaic: bool,
) -> FrameHeader:
    def group(keyword: str) -> Dataset:
        return _item(groups, keyword) or _item(shared, keyword) or Dataset()

    uid = str(ds.get("SOPInstanceUID", ""))
    where = f"{uid} frame {frame}"
    measures = group("PixelMeasuresSequence")
    content = group("FrameContentSequence")
    spacing = _floats(measures.get("PixelSpacing"), 2, "PixelSpacing", where)
    keys: dict[str, str] = {}
    if (t := _text(content.get("TemporalPositionIndex"))) is not None:
        keys["TemporalPositionIndex"] = t
    if (e := _text(group("MREchoSequence").get("EffectiveEchoTime"))) is not None:
        keys["EffectiveEchoTime"] = e
    diffusion = group("MRDiffusionSequence")
    if (b := _text(diffusion.get("DiffusionBValue"))) is not None:
        keys["DiffusionBValue"] = b
    for frame_type in ("MRImageFrameTypeSequence", "CTImageFrameTypeSequence"):
        if (kind := _text(group(frame_type).get("FrameType"))) is not None:
            keys["ImageType"] = kind
    return FrameHeader(
        ref=FrameRef(uid, frame),
        instance_number=instance_number,
        position=_floats(
            group("PlanePositionSequence").get("ImagePositionPatient"),
            3,
            "ImagePositionPatient",
            where,
        ),
        orientation=_floats(
            group("PlaneOrientationSequence").get("ImageOrientationPatient"),
            6,
            "ImageOrientationPatient",
            where,
        ),
        shape=(int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)),
        spacing=(float(spacing[0]), float(spacing[1])),
        thickness=_number(measures.get("SliceThickness")),
        image_type=tuple(keys["ImageType"].split("\\")) if "ImageType" in keys else image_type,
        stack_id=_text(content.get("StackID")),
        keys=keys,
        time=_text(content.get("FrameAcquisitionDateTime")),
        mosaic=mosaic,
    )


def normal_of(orientation: np.ndarray) -> np.ndarray:
    """The unit slice normal of an ImageOrientationPatient (row x column)."""
    n = np.cross(orientation[:3], orientation[3:])
    return np.asarray(n / np.linalg.norm(n))


def frame_digests(ds: Dataset) -> list[bytes]:
    """sha256 of each frame's stored pixel data bytes (encoded as received): what tells an
    identical duplicate from a repeat at the same position."""
    data = ds.get("PixelData")
    n = int(_number(ds.get("NumberOfFrames")) or 1)
    if data is None:
        return [b""] * n
    if n == 1:
        return [hashlib.sha256(data).digest()]
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        frames = list(generate_frames(data, number_of_frames=n))
    else:
        size = len(data) // n
        frames = [data[k * size : (k + 1) * size] for k in range(n)]
    return [hashlib.sha256(f).digest() for f in frames]


def series_stacks(paths: Sequence[Path]) -> list[Stack]:
    """The stacks of the series stored at ``paths``, from the headers; pixel data is read only
    for frames that share a position. Raises ``GeometryError`` for frames without geometry."""
    headers: list[FrameHeader] = []
    where: dict[str, Path] = {}
    for path in paths:
        found = read_headers(dcmread(path, stop_before_pixels=True))
        headers += found
        where.update((h.ref.sop_instance_uid, path) for h in found)

    @lru_cache(maxsize=4)
    def digests(path: Path) -> list[bytes]:
        return frame_digests(dcmread(path))

    def digest(ref: FrameRef) -> bytes:
        return digests(where[ref.sop_instance_uid])[(ref.frame_number or 1) - 1]

    return split_stacks(headers, digest)


# ---- splitting -------------------------------------------------------------------------------


def _geometric_groups(headers: Sequence[FrameHeader]) -> list[list[FrameHeader]]:
    """Frames that could share one volume at all: same orientation (within tolerance), matrix,
    pixel spacing, Stack ID, localizer or not, mosaic or not."""
    groups: list[tuple[FrameHeader, list[FrameHeader]]] = []
    for h in headers:
        for first, members in groups:
            if (
                h.shape == first.shape
                and h.stack_id == first.stack_id
                and h.mosaic == first.mosaic
                and ("LOCALIZER" in h.image_type) == ("LOCALIZER" in first.image_type)
                and np.allclose(h.spacing, first.spacing, rtol=1e-4)
                and np.allclose(h.orientation, first.orientation, atol=ORIENTATION_TOLERANCE)
            ):
                members.append(h)
                break
        else:
            groups.append((h, [h]))
    return [members for _, members in groups]


def _sort_key(h: FrameHeader) -> tuple[int, str, int]:
    return (
        h.instance_number if h.instance_number is not None else 1 << 30,
        h.ref.sop_instance_uid,
        h.ref.frame_number or 0,
    )


def _along(frames: Sequence[FrameHeader]) -> np.ndarray:
    normal = normal_of(frames[0].orientation)
    return np.array([float(f.position @ normal) for f in frames])


def _by_position(frames: Sequence[FrameHeader]) -> list[list[FrameHeader]]:
    """Frames grouped by slice position (within POSITION_TOLERANCE_MM), ascending."""
    ordered = sorted(frames, key=lambda f: float(f.position @ normal_of(frames[0].orientation)))
    along = _along(ordered)
    out: list[list[FrameHeader]] = []
    last = None
    for f, s in zip(ordered, along, strict=True):
        if last is not None and s - last < POSITION_TOLERANCE_MM:
            out[-1].append(f)
        else:
            out.append([f])
        last = s
    return out


def _off_line(frames: Sequence[FrameHeader]) -> tuple[FrameHeader, float] | None:
    """The frame farthest off the line the first and last slice origins draw, if beyond the
    tolerance: no affine describes such a stack (the in-plane shift changes)."""
    if len(frames) < 3:
        return None
    normal = normal_of(frames[0].orientation)
    first, last = frames[0].position, frames[-1].position
    step_along = float((last - first) @ normal)
    if abs(step_along) < POSITION_TOLERANCE_MM:
        return None
    per_mm = (last - first) / step_along
    worst, distance = frames[0], 0.0
    for f in frames:
        predicted = first + per_mm * float((f.position - first) @ normal)
        d = float(np.linalg.norm(f.position - predicted))
        if d > distance:
            worst, distance = f, d
    return (worst, distance) if distance > LINE_TOLERANCE_MM else None


def _collapse_duplicates(
    frames: list[FrameHeader], digest: Callable[[FrameRef], bytes] | None
) -> tuple[list[FrameHeader], list[str]]:
    if digest is None:
        return frames, []
    kept: list[FrameHeader] = []
    notes = []
    for at in _by_position(frames):
        seen: dict[bytes, FrameHeader] = {}
        for f in sorted(at, key=_sort_key):
            if len(at) == 1:
                kept.append(f)
                continue
            d = digest(f.ref)
            if d in seen:
                notes.append(
                    f"{f.where} duplicates {seen[d].where} (same position and pixel data): "
                    "collapsed into one"
                )
                continue
            seen[d] = f
            kept.append(f)
    return kept, notes


def _split_by(frames: list[FrameHeader], keyword: str) -> list[list[FrameHeader]] | None:
    values: dict[str | None, list[FrameHeader]] = defaultdict(list)
    for f in frames:
        values[f.keys.get(keyword)].append(f)
    return list(values.values()) if len(values) > 1 else None


def _rank_by_time(frames: list[FrameHeader]) -> list[list[FrameHeader]] | None:
    """The k-th frame in time at each position goes to stack k; ``None`` when the frames that
    share a position do not differ in time."""
    ranks: dict[int, list[FrameHeader]] = defaultdict(list)
    for at in _by_position(frames):
        times = [f.time for f in at]
        if len(at) > 1 and (None in times or len(set(times)) != len(times)):
            return None
        for k, f in enumerate(sorted(at, key=lambda f: (f.time or "", *_sort_key(f)))):
            ranks[k].append(f)
    return [ranks[k] for k in sorted(ranks)] if len(ranks) > 1 else None


def _inconsistency(frames: Sequence[FrameHeader]) -> str | None:
    for at in _by_position(frames):
        if len(at) > 1:
            a, b = sorted(at, key=_sort_key)[:2]
            s = float(a.position @ normal_of(a.orientation))
            return (
                f"two frames share one slice position: {a.where} and {b.where} at "
                f"{s:.2f} mm, with different pixel data and nothing that tells them apart "
                f"({', '.join(DISTINGUISHERS)} and {'/'.join(TIME_KEYWORDS[:2])} are equal)"
            )
    ordered = [at[0] for at in _by_position(frames)]
    if (off := _off_line(ordered)) is not None:
        f, d = off
        return (
            f"slice origins do not lie on one line: {f.where} is {d:.2f} mm off the line "
            f"from {ordered[0].where} to {ordered[-1].where} (the in-plane shift, or gantry "
            "tilt, changes within the stack)"
        )
    return None


def _resolve(
    frames: list[FrameHeader],
    distinguishers: tuple[str, ...],
    by: tuple[tuple[str, str], ...],
) -> list[tuple[list[FrameHeader], tuple[tuple[str, str], ...], str | None]]:
    problem = _inconsistency(frames)
    if problem is None:
        return [(frames, by, None)]
    repeats = max(len(at) for at in _by_position(frames))
    for k, keyword in enumerate(distinguishers):
        parts = _split_by(frames, keyword)
        # a value per slice (AcquisitionNumber per rotation, say) is no acquisition split
        if parts is not None and len(parts) <= max(repeats, len(frames) // 2):
            out = []
            for part in parts:
                value = part[0].keys.get(keyword) or "(none)"
                out += _resolve(part, distinguishers[k + 1 :], (*by, (keyword, value)))
            return out
    ranked = _rank_by_time(frames) if repeats > 1 else None
    if ranked is not None:
        out = []
        for k, part in enumerate(ranked, start=1):
            out += _resolve(part, (), (*by, ("time point", str(k))))
        return out
    return [(frames, by, problem)]


def split_stacks(
    headers: Sequence[FrameHeader], digest: Callable[[FrameRef], bytes] | None = None
) -> list[Stack]:
    """The stacks of one series, in order of their first instance. ``digest`` gives a frame's
    pixel data digest; it is asked only for frames that share a position."""
    found: list[tuple[list[FrameHeader], tuple[tuple[str, str], ...], str | None, list[str]]] = []
    for group in _geometric_groups(headers):
        frames, notes = _collapse_duplicates(group, digest)
        for part, by, refusal in _resolve(frames, DISTINGUISHERS, ()):
            found.append((part, by, refusal, notes))
    found.sort(key=lambda item: min(_sort_key(f) for f in item[0]))
    stacks = []
    for number, (frames, by, problem, notes) in enumerate(found, start=1):
        ordered = sorted(frames, key=lambda f: float(f.position @ normal_of(frames[0].orientation)))
        refusal = problem
        if any(f.mosaic for f in ordered):
            refusal = (
                "Siemens mosaic (ImageType MOSAIC / NumberOfImagesInMosaic): the slices are "
                "tiled in one image; the node does not demosaic, so it is not one volume"
            )
        stack = Stack(number, tuple(ordered), by, tuple(notes), refusal)
        stacks.append(replace(stack, refusal=f"{stack.label}: {refusal}") if refusal else stack)
    return stacks


# ---- layout ----------------------------------------------------------------------------------


def _runs(gaps: np.ndarray) -> list[tuple[int, float]]:
    runs: list[tuple[int, float]] = []
    for g in gaps:
        if runs and abs(g - runs[-1][1]) <= max(RUN_TOLERANCE_MM, 0.01 * runs[-1][1]):
            count, value = runs[-1]
            runs[-1] = (count + 1, (value * count + g) / (count + 1))
        else:
            runs.append((1, float(g)))
    return runs


def spacing_summary(gaps: np.ndarray) -> str:
    """The gaps as an admin reads them, e.g. ``23 x 4.00 mm + 17 x 7.00 mm``."""
    if len(gaps) == 0:
        return "one slice"
    runs = _runs(gaps)
    if len(runs) == 1:
        return f"uniform {runs[0][1]:.2f} mm"
    if len(runs) <= 4:
        return " + ".join(f"{n} x {g:.2f} mm" for n, g in runs)
    return (
        f"irregular {float(gaps.min()):.2f}-{float(gaps.max()):.2f} mm "
        f"(mean {float(gaps.mean()):.2f} mm)"
    )


def _local_thickness(frames: Sequence[FrameHeader], gaps: np.ndarray, i: int) -> float:
    """SliceThickness, or the frame's smaller neighbouring gap when it has none."""
    t = frames[i].thickness
    if t is not None and t > 0:
        return t
    neighbours = [float(gaps[j]) for j in (i - 1, i) if 0 <= j < len(gaps)]
    return min(neighbours) if neighbours else 1.0


def layout(
    stack: Stack,
    *,
    gap_tolerance: float = GAP_TOLERANCE,
    interpolate_gaps_mm: float = 0.0,
) -> Layout:
    """The slice layout of a consistent stack, or a ``GeometryError`` that says what is wrong."""
    if stack.refusal is not None:
        raise GeometryError(stack.refusal)
    frames = stack.frames
    normal = normal_of(frames[0].orientation)
    along = _along(frames)
    if len(frames) == 1:
        t = frames[0].thickness or 1.0
        return Layout(normal, along, np.array([t]), normal * t, True, 0.0, "one slice", stack.notes)
    gaps = np.diff(along)
    notes = list(stack.notes)
    for i, g in enumerate(gaps):
        ta, tb = _local_thickness(frames, gaps, i), _local_thickness(frames, gaps, i + 1)
        allowed = gap_tolerance * (ta + tb) / 2
        if g <= allowed:
            continue
        a, b = frames[i], frames[i + 1]
        others = np.delete(gaps, i)
        local = float(np.median(others)) if len(others) else (ta + tb) / 2
        missing = max(1, round(g / local) - 1)
        where = f"between {a.where} (at {along[i]:.2f} mm) and {b.where} (at {along[i + 1]:.2f} mm)"
        if g <= interpolate_gaps_mm:
            notes.append(f"interpolated across a gap of {g:.2f} mm {where}")
            continue
        raise GeometryError(
            f"{stack.label}: slices missing {where} along the slice normal: a gap of "
            f"{g:.2f} mm (about {missing} slice{'s' if missing > 1 else ''} of {local:.2f} mm) "
            f"where the slices' thickness ({(ta + tb) / 2:.2f} mm x tolerance "
            f"{gap_tolerance:g}) allows {allowed:.2f} mm; a rule may allow interpolation "
            "across such gaps (interpolate_gaps_mm)"
        )
    extents = np.empty(len(frames))
    extents[0], extents[-1] = gaps[0], gaps[-1]
    extents[1:-1] = (gaps[:-1] + gaps[1:]) / 2
    step = (frames[-1].position - frames[0].position) / (len(frames) - 1)
    cos = abs(float(step @ normal)) / float(np.linalg.norm(step))
    tilt = float(np.degrees(np.arccos(min(1.0, cos))))
    summary = spacing_summary(gaps)
    return Layout(normal, along, extents, step, len(_runs(gaps)) == 1, tilt, summary, tuple(notes))
