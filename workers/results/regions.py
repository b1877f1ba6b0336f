"""Where each segment is drawn in the SR: its key frame and its outline there.

OHIF draws a TID 1500 measurement only from a planar region (PITFALLS 30), so every segment
with voxels gets one: the outline of its largest connected area, on the source frame where the
segment is largest. The outline is a closed polyline in the image's pixel coordinates (SCOORD:
column, row, with (0, 0) the top-left corner of the top-left pixel), or the same points in the
patient's coordinates (SCOORD3D) for a Comprehensive 3D SR.
"""

from __future__ import annotations

from dataclasses import dataclass

import contourpy
import numpy as np
from pydicom.dataset import Dataset

from dicom_node.jobs.stacks import read_headers
from workers.results.seg import Mask, ResultError

MAX_POINTS = 256  # enough to follow an organ's outline; each point is 2 or 3 floats in the SR


@dataclass(frozen=True, slots=True)
class Region:
    """One segment's outline on one source frame."""

    frame: int  # index into the mask
    sop_instance_uid: str
    frame_number: int  # 1-based in a multi-frame source, 0 for a single-frame one
    points: np.ndarray  # float [n, 2]: (column, row), closed (last == first)


def label_areas(mask: Mask) -> np.ndarray:
    """Pixels per label value per frame: int [frames, 256], in one pass over the mask."""
    flat = mask.labels.reshape(mask.labels.shape[0], -1)
    return np.stack([np.bincount(frame, minlength=256) for frame in flat])


def key_frame(mask: Mask, value: int, areas: np.ndarray | None = None) -> int | None:
    """The mask frame where label ``value`` covers the most pixels; None when it has none.
    ``areas``: ``label_areas(mask)``, when the caller asks for several labels."""
    per_frame = (label_areas(mask) if areas is None else areas)[:, value]
    k = int(np.argmax(per_frame))
    return k if per_frame[k] > 0 else None


def _area(line: np.ndarray) -> float:
    x, y = line[:, 0], line[:, 1]
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def _thinned(line: np.ndarray, most: int) -> np.ndarray:
    """At most ``most`` points, evenly along the line, still closed."""
    if len(line) <= most:
        return line
    keep = np.linspace(0, len(line) - 1, most).round().astype(int)
    out: np.ndarray = line[keep]
    out[-1] = out[0]
    return out


def outline(inside: np.ndarray, most: int = MAX_POINTS) -> np.ndarray:
    """The closed outline of the largest area of ``inside`` (bool [rows, columns]), as
    (column, row) pixel coordinates around the pixels' edges."""
    padded = np.pad(inside.astype(np.float32), 1)  # areas touching the border close too
    lines = contourpy.contour_generator(z=padded).lines(0.5)
    closed = [np.asarray(line) for line in lines if len(line) >= 4]
    if not closed:
        raise ResultError("a segment has voxels but no outline")
    line = max(closed, key=_area)
    # contour coordinates have pixel centres on integers, in the padded image; SCOORD puts the
    # first pixel's centre at (0.5, 0.5)
    return _thinned(line - 1 + 0.5, most)


def region(mask: Mask, value: int, areas: np.ndarray | None = None) -> Region | None:
    """Label ``value``'s outline on its key frame; None when the label has no voxels."""
    k = key_frame(mask, value, areas)
    if k is None:
        return None
    return Region(
        frame=k,
        sop_instance_uid=mask.sop_instance_uids[k],
        frame_number=int(mask.frame_numbers[k]),
        points=outline(mask.labels[k] == value),
    )


def in_patient(points: np.ndarray, source: Dataset, frame_number: int) -> np.ndarray:
    """SCOORD pixel coordinates on a source frame -> patient coordinates (mm), for SCOORD3D."""
    headers = read_headers(source)
    header = headers[frame_number - 1] if frame_number else headers[0]
    row_dir, col_dir = header.orientation[:3], header.orientation[3:]
    between_rows, between_columns = header.spacing
    # pixel centre (0.5, 0.5) is ImagePositionPatient
    x, y = points[:, 0:1] - 0.5, points[:, 1:2] - 0.5
    return np.asarray(
        header.position + x * between_columns * row_dir + y * between_rows * col_dir,
        dtype=np.float32,
    )
