"""Series -> volume in patient coordinates, refusing only what is truly inconsistent.

Geometry comes from each frame's own Image Position/Orientation (Patient), never from the
order the files arrived in. The affine maps a voxel index (column, row, slice, 1) to patient
LPS millimetres; its third column is the measured step between slice positions, which is *not*
parallel to the slice normal under gantry tilt (PITFALLS 16), so tilted CT lands where it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_node.errors import Permanent
from workers.inference.decode import pixel_array

ORIENTATION_TOLERANCE = 1e-3  # direction cosines
POSITION_TOLERANCE_MM = 0.1  # in-plane drift between slice origins, beyond the step
UNIFORM_TOLERANCE = 0.01  # relative spread of slice gaps still called uniform
MISSING_SLICE_FACTOR = 1.5  # a gap this many median gaps wide means slices are missing


class VolumeError(Permanent):
    """The series cannot be one volume; the message says why, for the admin."""


@dataclass(frozen=True, slots=True)
class FrameRef:
    sop_instance_uid: str
    frame_number: int | None  # 1-based, for multi-frame instances


@dataclass(frozen=True, slots=True)
class _Frame:
    ref: FrameRef
    position: np.ndarray
    orientation: np.ndarray
    spacing: tuple[float, float]  # (between rows, between columns), as PixelSpacing
    pixels: np.ndarray
    slope: float
    intercept: float


@dataclass(frozen=True)
class Volume:
    array: np.ndarray  # float32 [slice, row, column], rescaled (HU for CT)
    affine: np.ndarray  # 4x4: (column, row, slice, 1) -> patient LPS mm
    frames: tuple[FrameRef, ...]  # source frame of each slice index
    positions_mm: np.ndarray  # each slice's position along the normal
    uniform: bool  # slice gaps equal within UNIFORM_TOLERANCE
    tilt_deg: float  # angle between the slice step and the slice normal

    @property
    def normal(self) -> np.ndarray:
        row, col = self.affine[:3, 0], self.affine[:3, 1]
        return _unit(np.cross(row, col))

    def patient_point(self, column: float, row: float, slice_: float) -> np.ndarray:
        return np.asarray(self.affine @ np.array([column, row, slice_, 1.0]))[:3]


def load_series(paths: Sequence[Path]) -> Volume:
    frames: list[_Frame] = []
    for path in paths:
        ds = dcmread(path)
        frames.extend(_frames(ds, path))
    return build_volume(frames)


def _float_list(value: Any, n: int, what: str, where: FrameRef) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise VolumeError(f"{where.sop_instance_uid}: {what} missing or malformed") from exc
    if arr.shape != (n,):
        raise VolumeError(f"{where.sop_instance_uid}: {what} has {arr.size} values, not {n}")
    return arr


def _frames(ds: Dataset, path: Path) -> list[_Frame]:
    uid = str(ds.get("SOPInstanceUID", path.name))
    pixels = pixel_array(ds, path)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames == 1 and "PerFrameFunctionalGroupsSequence" not in ds:
        ref = FrameRef(uid, None)
        return [_frame(ref, ds, ds, ds, pixels if pixels.ndim == 2 else pixels[0])]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = (ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    if not per_frame or len(per_frame) != n_frames:
        raise VolumeError(f"{uid}: multi-frame without per-frame functional groups: no geometry")
    stack = pixels if pixels.ndim == 3 else pixels[np.newaxis]
    out = []
    for i, groups in enumerate(per_frame):

        def group(keyword: str, g: Dataset = groups) -> Dataset:
            seq = g.get(keyword) or shared.get(keyword)
            return seq[0] if seq else Dataset()

        out.append(
            _frame(
                FrameRef(uid, i + 1),
                group("PlanePositionSequence"),
                group("PlaneOrientationSequence"),
                group("PixelMeasuresSequence"),
                stack[i],
                transform=group("PixelValueTransformationSequence"),
            )
        )
    return out


def _frame(
    ref: FrameRef,
    pos: Dataset,
    ori: Dataset,
    meas: Dataset,
    pixels: np.ndarray,
    *,
    transform: Dataset | None = None,
) -> _Frame:
    transform = transform if transform is not None else pos
    spacing = _float_list(meas.get("PixelSpacing"), 2, "PixelSpacing", ref)
    return _Frame(
        ref=ref,
        position=_float_list(pos.get("ImagePositionPatient"), 3, "ImagePositionPatient", ref),
        orientation=_float_list(
            ori.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", ref
        ),
        spacing=(float(spacing[0]), float(spacing[1])),
        pixels=pixels,
        slope=float(transform.get("RescaleSlope", 1) or 1),
        intercept=float(transform.get("RescaleIntercept", 0) or 0),
    )


def build_volume(frames: Sequence[_Frame]) -> Volume:
    if not frames:
        raise VolumeError("no frames")
    first = frames[0]
    _check_consistent(frames)
    row_dir, col_dir = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)
    ordered = sorted(frames, key=lambda f: float(f.position @ normal))
    along = np.array([float(f.position @ normal) for f in ordered])
    gaps = np.diff(along)
    if len(ordered) > 1 and np.any(gaps < POSITION_TOLERANCE_MM):
        raise VolumeError(
            "two frames share one slice position (several echoes, phases or "
            "a repeated slice): not one volume"
        )
    uniform, step = _step(ordered, gaps)
    dy, dx = first.spacing
    affine = np.eye(4)
    affine[:3, 0] = row_dir * dx
    affine[:3, 1] = col_dir * dy
    affine[:3, 2] = step
    affine[:3, 3] = ordered[0].position
    tilt = 0.0
    if len(ordered) > 1:
        cos = abs(float(step @ normal)) / float(np.linalg.norm(step))
        tilt = float(np.degrees(np.arccos(min(1.0, cos))))
    array = np.stack([f.pixels.astype(np.float32) * f.slope + f.intercept for f in ordered])
    return Volume(array, affine, tuple(f.ref for f in ordered), along, uniform, tilt)


def _check_consistent(frames: Sequence[_Frame]) -> None:
    first = frames[0]
    for f in frames[1:]:
        if f.pixels.shape != first.pixels.shape:
            raise VolumeError(
                f"frame sizes differ: {first.pixels.shape} and {f.pixels.shape} "
                f"({f.ref.sop_instance_uid})"
            )
        if not np.allclose(f.orientation, first.orientation, atol=ORIENTATION_TOLERANCE):
            raise VolumeError(
                f"mixed orientations: {f.ref.sop_instance_uid} is not parallel to "
                f"{first.ref.sop_instance_uid}"
            )
        if not np.allclose(f.spacing, first.spacing, rtol=1e-4):
            raise VolumeError(f"pixel spacing differs: {first.spacing} and {f.spacing}")


def _step(ordered: Sequence[_Frame], gaps: np.ndarray) -> tuple[bool, np.ndarray]:
    """The slice step vector, and whether the slices are evenly spaced."""
    if len(ordered) == 1:
        row, col = ordered[0].orientation[:3], ordered[0].orientation[3:]
        return True, np.cross(row, col)  # one slice: unit thickness along the normal
    median = float(np.median(gaps))
    if float(gaps.max()) > MISSING_SLICE_FACTOR * median:
        at = int(np.argmax(gaps))
        raise VolumeError(
            f"slices missing: a gap of {gaps[at]:.2f} mm after slice {at} where "
            f"the others are {median:.2f} mm"
        )
    uniform = float(gaps.max() - gaps.min()) <= UNIFORM_TOLERANCE * median
    step = (ordered[-1].position - ordered[0].position) / (len(ordered) - 1)
    # Every slice origin must lie on the line the step draws: anything else is a series whose
    # slices were shifted in-plane, which no affine describes.
    normal = _unit(np.cross(ordered[0].orientation[:3], ordered[0].orientation[3:]))
    per_mm = step / float(step @ normal)  # the step per millimetre along the normal
    origin = ordered[0].position
    for f in ordered:
        predicted = origin + per_mm * float((f.position - origin) @ normal)
        if np.linalg.norm(f.position - predicted) > POSITION_TOLERANCE_MM:
            raise VolumeError(f"slice origins do not lie on one line ({f.ref.sop_instance_uid})")
    return uniform, step


def _unit(v: np.ndarray) -> np.ndarray:
    return np.asarray(v / np.linalg.norm(v))


def resample_uniform(volume: Volume) -> Volume:
    """Linear resampling along the step onto evenly spaced slices (for non-uniform series)."""
    if volume.uniform:
        return volume
    positions = volume.positions_mm
    n = len(positions)
    target = np.linspace(positions[0], positions[-1], n)
    upper = np.clip(np.searchsorted(positions, target, side="right"), 1, n - 1)
    lower = upper - 1
    w = ((target - positions[lower]) / (positions[upper] - positions[lower]))[:, None, None]
    array = (volume.array[lower] * (1 - w) + volume.array[upper] * w).astype(np.float32)
    return Volume(array, volume.affine, volume.frames, target, True, volume.tilt_deg)
