"""⑤a Series -> stacks -> one volume in patient coordinates, or a refusal that says why.

The series is split into stacks first (``dicom_node.jobs.stacks``); the stack a job runs on is
the one the rule chose, else the largest stack that is one volume. Geometry comes from each
frame's own Image Position/Orientation (Patient), never from the order the files arrived in.
The affine maps a voxel index (column, row, slice, 1) to patient LPS millimetres; its third
column is the mean step between slice origins, which is *not* parallel to the slice normal
under gantry tilt (PITFALLS 16). Where the spacing is not uniform (two regimes, irregular,
overlapping) the volume keeps every frame's true position and extent along the normal: the
model grid is resampled from them and the result mapped back onto them (``grid``), and volumes
are measured with them (``pipeline.measure``). Nothing is reoriented.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.jobs.stacks import (
    GAP_TOLERANCE,
    FrameHeader,
    FrameRef,
    GeometryError,
    Layout,
    Stack,
    frame_digests,
    layout,
    read_headers,
    split_stacks,
)
from workers.inference.decode import pixel_array, read_instance

VolumeError = GeometryError  # the name the pipeline and its callers know

__all__ = ["FrameRef", "Volume", "VolumeError", "build_volume", "load_series"]


@dataclass(frozen=True)
class Volume:
    array: np.ndarray  # [slice, row, column] rescaled (HU for CT): int16 when exact, else float32
    affine: np.ndarray  # 4x4: (column, row, slice, 1) -> patient LPS mm (mean slice step)
    frames: tuple[FrameRef, ...]  # source frame of each slice index
    positions_mm: np.ndarray  # each slice's position along the normal
    uniform: bool  # slice gaps equal (one spacing regime)
    tilt_deg: float  # angle between the slice step and the slice normal
    origins: np.ndarray | None = None  # [slice, 3]: each frame's ImagePositionPatient
    extents_mm: np.ndarray | None = None  # each frame's real extent along the normal
    spacing: str = ""  # e.g. "uniform 2.50 mm", "23 x 4.00 mm + 1 x 5.10 mm + 17 x 7.00 mm"
    stacks: tuple[dict[str, Any], ...] = ()  # every stack of the series, and why (not) chosen
    notes: tuple[str, ...] = ()  # duplicates collapsed, gaps interpolated

    @property
    def normal(self) -> np.ndarray:
        """The unit slice normal in patient coordinates."""
        row, col = self.affine[:3, 0], self.affine[:3, 1]
        n = np.cross(row, col)
        return np.asarray(n / np.linalg.norm(n))

    @property
    def pixel_area_mm2(self) -> float:
        """One pixel's area in mm²."""
        return float(np.linalg.norm(self.affine[:3, 0]) * np.linalg.norm(self.affine[:3, 1]))

    def slice_extents(self) -> np.ndarray:
        """Each slice's real extent along the normal (the affine's step when not recorded)."""
        if self.extents_mm is not None:
            return self.extents_mm
        return np.full(len(self.frames), abs(float(self.affine[:3, 2] @ self.normal)))

    def patient_point(self, column: float, row: float, slice_: float) -> np.ndarray:
        """Patient LPS mm of a voxel; on a source slice (integer ``slice_``) from that frame's
        own origin, so it is exact where the spacing is not uniform."""
        k = int(slice_)
        if self.origins is not None and k == slice_ and 0 <= k < len(self.origins):
            return np.asarray(
                self.origins[k] + self.affine[:3, 0] * column + self.affine[:3, 1] * row
            )
        return np.asarray(self.affine @ np.array([column, row, slice_, 1.0]))[:3]


@dataclass(frozen=True)
class _Pixels:
    stored: np.ndarray
    slope: float
    intercept: float


def _frame_pixels(
    ds: Dataset, pixels: np.ndarray, headers: list[FrameHeader]
) -> dict[FrameRef, _Pixels]:
    if headers[0].ref.frame_number is None:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        return {
            headers[0].ref: _Pixels(pixels if pixels.ndim == 2 else pixels[0], slope, intercept)
        }
    stack = pixels if pixels.ndim == 3 else pixels[np.newaxis]
    shared = (ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    out = {}
    for i, (h, groups) in enumerate(zip(headers, ds.PerFrameFunctionalGroupsSequence, strict=True)):
        seq = groups.get("PixelValueTransformationSequence") or shared.get(
            "PixelValueTransformationSequence"
        )
        t = seq[0] if seq else Dataset()
        out[h.ref] = _Pixels(
            stack[i], float(t.get("RescaleSlope", 1) or 1), float(t.get("RescaleIntercept", 0) or 0)
        )
    return out


def load_series(
    paths: Sequence[Path],
    *,
    stack: int | None = None,
    gap_tolerance: float = GAP_TOLERANCE,
    interpolate_gaps_mm: float = 0.0,
) -> Volume:
    """The volume of one stack of the series in ``paths``: stack number ``stack``, or the
    largest that is one volume."""
    headers: list[FrameHeader] = []
    pixels: dict[FrameRef, _Pixels] = {}
    digests: dict[FrameRef, bytes] = {}
    for path in paths:
        ds = read_instance(path)
        stored = pixel_array(ds, path)  # undecodable data is the first thing to say
        found = read_headers(ds)
        pixels.update(_frame_pixels(ds, stored, found))
        digests.update(zip((h.ref for h in found), frame_digests(ds), strict=False))
        headers.extend(found)
    if not headers:
        raise VolumeError("no frames")
    # the stored bytes, as the routing rules digest them: both number the stacks alike
    stacks = split_stacks(headers, digests.__getitem__)
    chosen, chosen_layout, described = choose_stack(
        stacks, stack, gap_tolerance=gap_tolerance, interpolate_gaps_mm=interpolate_gaps_mm
    )
    return build_volume(chosen, chosen_layout, pixels, described)


def choose_stack(
    stacks: Sequence[Stack],
    number: int | None,
    *,
    gap_tolerance: float = GAP_TOLERANCE,
    interpolate_gaps_mm: float = 0.0,
) -> tuple[Stack, Layout, tuple[dict[str, Any], ...]]:
    """The stack to run on, its layout, and every stack described (slice count, spacing, and
    why it was or was not chosen). Refuses with the reason of the stack that would have run."""
    layouts: dict[int, Layout | str] = {}
    for s in stacks:
        try:
            layouts[s.number] = layout(
                s, gap_tolerance=gap_tolerance, interpolate_gaps_mm=interpolate_gaps_mm
            )
        except GeometryError as exc:
            layouts[s.number] = str(exc)
    if number is not None:
        wanted = [s for s in stacks if s.number == number]
        if not wanted:
            raise VolumeError(f"no stack {number}: the series has {len(stacks)}")
        pick = wanted[0]
    else:
        usable = [
            s
            for s in stacks
            if isinstance(layouts[s.number], Layout) and "LOCALIZER" not in s.frames[0].image_type
        ]
        pool = (
            usable
            or [s for s in stacks if "LOCALIZER" not in s.frames[0].image_type]
            or list(stacks)
        )
        pick = max(pool, key=lambda s: (len(s.frames), -s.number))
    described = tuple(_describe(s, layouts[s.number], pick) for s in stacks)
    result = layouts[pick.number]
    if isinstance(result, str):
        others = [d["label"] for d in described if d["number"] != pick.number]
        suffix = f" (the series' other stacks: {'; '.join(others)})" if others else ""
        raise VolumeError(result + suffix)
    return pick, result, described


def _describe(s: Stack, result: Layout | str, pick: Stack) -> dict[str, Any]:
    if s.number == pick.number:
        why = "chosen"
    elif isinstance(result, str):
        why = f"refused: {result}"
    elif "LOCALIZER" in s.frames[0].image_type:
        why = "not chosen: a localizer"
    else:
        why = f"not chosen: stack {pick.number} has {len(pick.frames)} frames"
    return {
        "number": s.number,
        "label": s.label,
        "frames": len(s.frames),
        "spacing": result.spacing if isinstance(result, Layout) else None,
        "chosen": s.number == pick.number,
        "why": why,
        "notes": list(result.notes if isinstance(result, Layout) else s.notes),
    }


def _rescaled(parts: list[_Pixels]) -> np.ndarray:
    """The frames' rescaled values, stacked. Integer stored values with slope 1 and an integer
    intercept that land in the int16 range (CT in HU) stay int16: the same numbers as float32,
    in half the memory. Anything else is float32."""
    exact = all(
        p.slope == 1 and float(p.intercept).is_integer() and p.stored.dtype.kind in "iu"
        for p in parts
    )
    if exact:
        out = np.empty((len(parts), *parts[0].stored.shape), dtype=np.int16)
        for i, p in enumerate(parts):
            values = p.stored.astype(np.int32) + int(p.intercept)
            if values.size and (values.min() < INT16.min or values.max() > INT16.max):
                break
            out[i] = values
        else:
            return out
    return np.stack([p.stored.astype(np.float32) * p.slope + p.intercept for p in parts])


INT16 = np.iinfo(np.int16)


def build_volume(
    stack: Stack,
    where: Layout,
    pixels: dict[FrameRef, _Pixels],
    described: tuple[dict[str, Any], ...] = (),
) -> Volume:
    """The volume of one stack laid out as ``where`` says, in HU (rescaled)."""
    frames = stack.frames
    first = frames[0]
    row_dir, col_dir = first.orientation[:3], first.orientation[3:]
    dy, dx = first.spacing
    affine = np.eye(4)
    affine[:3, 0] = row_dir * dx
    affine[:3, 1] = col_dir * dy
    affine[:3, 2] = where.step
    affine[:3, 3] = first.position
    array = _rescaled([pixels[f.ref] for f in frames])
    return Volume(
        array=array,
        affine=affine,
        frames=tuple(f.ref for f in frames),
        positions_mm=where.positions_mm,
        uniform=where.uniform,
        tilt_deg=where.tilt_deg,
        origins=np.stack([f.position for f in frames]),
        extents_mm=where.extents_mm,
        spacing=where.spacing,
        stacks=described,
        notes=where.notes,
    )
