"""A regularised SEG grid for stacks that are not rectangular (gantry tilt, irregular spacing).

3D Slicer's SEG reader (dcmqi), dcm2niix and VTK-based tools rebuild one rectangular volume
from a SEG's frames and refuse frames that leave it (PITFALLS 31). A tilted stack's slices are
sheared: each slice's pixels sit shifted in its own plane. This grid keeps every frame coplanar
with its source slice (same orientation, same distance along the slice normal) and moves the
mask in-plane instead, by the slice's shear rounded to whole pixels (nearest neighbour, at most
half a pixel off), on a frame widened so that nothing falls off its edge. Along the normal the
frames are evenly spaced at the smallest gap; where the source has a wider gap, the frames in it
repeat the nearest slice's mask. A stack that already is rectangular needs none of this
(``regularise`` returns None) and the profile gets the source-aligned SEG itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from dicom_node.jobs.stacks import FrameHeader, normal_of, read_headers
from workers.results.errors import ResultError

SHEAR_PX = 0.05  # in-plane offsets below this are no shear
GAP_TOLERANCE = 0.01  # relative: gaps this close are one spacing


@dataclass(frozen=True)
class Grid:
    """The pixels and geometry highdicom needs for a SEG on a rectangular grid."""

    pixels: np.ndarray  # [frames, rows, columns, ...], as the source-aligned SEG's pixels
    positions: list[hd.PlanePositionSequence]
    orientation: hd.PlaneOrientationSequence
    measures: hd.PixelMeasuresSequence


def frame_headers(sources: Sequence[Dataset]) -> list[FrameHeader]:
    """Every source frame's geometry, in the order the SEG's pixels are: the single-frame
    instances in their order, or one multi-frame instance's frames in frame-number order."""
    return [h for ds in sources for h in read_headers(ds)]


def regularise(pixels: np.ndarray, headers: Sequence[FrameHeader]) -> Grid | None:
    """``pixels`` frame k lies on ``headers[k]``; the same mask on a rectangular grid, or None
    when the frames already are one."""
    if len(headers) != len(pixels):
        raise ResultError(f"{len(pixels)} SEG frames for {len(headers)} source frames")
    first = headers[0]
    if any(not np.allclose(h.orientation, first.orientation, atol=1e-4) for h in headers):
        raise ResultError("the source frames differ in orientation: no one grid holds them")
    row_dir, col_dir = first.orientation[:3], first.orientation[3:]
    normal = normal_of(first.orientation)
    between_rows, between_columns = first.spacing
    offsets = np.stack([h.position - first.position for h in headers])
    along = offsets @ normal
    order = np.argsort(along, kind="stable")
    along, offsets, pixels = along[order], offsets[order], pixels[order]
    shear = np.stack([offsets @ col_dir / between_rows, offsets @ row_dir / between_columns], 1)
    gaps = np.diff(along)
    if len(gaps) and gaps.min() <= 0:
        raise ResultError("two source frames share a position: no one grid holds them")
    step = float(gaps.min()) if len(gaps) else float(first.thickness or 1.0)
    uniform = not len(gaps) or np.allclose(gaps, step, rtol=GAP_TOLERANCE)
    if uniform and np.abs(shear).max() < SHEAR_PX:
        return None
    # nearest source frame for each plane of the even grid
    planes = along[0] + step * np.arange(round(float(along[-1] - along[0]) / step) + 1)
    nearest = np.abs(planes[:, None] - along[None, :]).argmin(axis=1)
    whole = np.rint(shear).astype(int)  # [frames, (row, column)] in source pixels
    low = whole.min(axis=0)
    rows, columns = pixels.shape[1:3]
    size = (rows + int(whole[:, 0].max() - low[0]), columns + int(whole[:, 1].max() - low[1]))
    out = np.zeros((len(planes), *size, *pixels.shape[3:]), dtype=pixels.dtype)
    positions = []
    origin = first.position + low[0] * between_rows * col_dir + low[1] * between_columns * row_dir
    for j, k in enumerate(nearest):
        r, c = whole[k] - low
        out[j, r : r + rows, c : c + columns] = pixels[k]
        at = origin + planes[j] * normal  # coplanar with source frame k when it lies there
        positions.append(hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, at))
    return Grid(
        pixels=out,
        positions=positions,
        orientation=hd.PlaneOrientationSequence(
            hd.CoordinateSystemNames.PATIENT, [float(v) for v in first.orientation]
        ),
        measures=hd.PixelMeasuresSequence(
            pixel_spacing=[between_rows, between_columns],
            slice_thickness=step,
            spacing_between_slices=step,
        ),
    )
