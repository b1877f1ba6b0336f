"""Re-compose real slices into the input patterns hospitals send: re-space, drop, duplicate,
re-order and re-stamp the real CT and MR slices of the test data. Pixels are never synthesised:
every frame carries a real slice's pixel data (a crop of one, at most).

Each pattern is a list of pydicom datasets in one new series (fresh Study/Series/SOP UIDs), so a
test may write them, send them, or stack them, and compute what to expect independently.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

TILTED = "dcm_qa_ct/In/Philips/S21610/S2010"  # 54 x 2.5 mm, gantry tilt 18.5 degrees
STRAIGHT = "dcm_qa_ct/In/Philips/S21570/S2010"  # 28 x 5 mm
LOCALIZER = "dcm_qa_ct/In/Philips/S21570/S1000/I10"
POSITIONS = {
    "HFS": "dcm_qa_decubitus/In/HFS/3_t1_fl2d_sag",
    "HFP": "dcm_qa_decubitus/In/HFP/2_t1_fl2d_sag",
    "HFDR": "dcm_qa_decubitus/In/HFDR/2_t1_fl2d_sag",
    "HFDL": "dcm_qa_decubitus/In/HFDL/2_t1_fl2d_sag",
}


def read_series(testdata: Path, folder: str) -> list[Dataset]:
    """The real slices of a folder, in InstanceNumber order (DIRFILE and notes left out)."""
    files = [p for p in (testdata / folder).iterdir() if p.suffix in {"", ".dcm"}]
    datasets = [dcmread(p) for p in files if p.name != "DIRFILE"]
    return sorted(datasets, key=lambda ds: int(ds.InstanceNumber))


def floats(value: object) -> np.ndarray:
    return np.array([float(v) for v in value], dtype=np.float64)  # type: ignore[attr-defined]


def normal(ds: Dataset) -> np.ndarray:
    iop = floats(ds.ImageOrientationPatient)
    n = np.cross(iop[:3], iop[3:])
    return n / np.linalg.norm(n)


def step_per_mm(slices: Sequence[Dataset]) -> np.ndarray:
    """The move of the slice origin per millimetre along the normal: the normal itself for an
    untilted series, with the in-plane shear of gantry tilt otherwise."""
    first, last = floats(slices[0].ImagePositionPatient), floats(slices[-1].ImagePositionPatient)
    return (last - first) / float((last - first) @ normal(slices[0]))


def new_series(slices: Sequence[Dataset], description: str) -> list[Dataset]:
    """Deep copies in one new study and series, each with a new SOP Instance UID."""
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    out = []
    for k, original in enumerate(slices, start=1):
        ds = copy.deepcopy(original)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID = frame_of_reference
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription = description[:64]
        ds.InstanceNumber = k
        out.append(ds)
    return out


def set_position(ds: Dataset, ipp: np.ndarray) -> None:
    ds.ImagePositionPatient = [round(float(v), 4) for v in ipp]
    if "SliceLocation" in ds:
        ds.SliceLocation = round(float(ipp @ normal(ds)), 4)


def respace(
    slices: Sequence[Dataset], gaps: Sequence[float], thickness: Sequence[float] = ()
) -> list[Dataset]:
    """The first ``len(gaps) + 1`` slices moved along the series' own line (its tilt kept) so
    that consecutive gaps along the normal are ``gaps``; SliceThickness per slice if given."""
    chosen = list(slices[: len(gaps) + 1])
    per_mm = step_per_mm(slices)
    origin = floats(chosen[0].ImagePositionPatient)
    offsets = np.concatenate([[0.0], np.cumsum(gaps)])
    for k, (ds, off) in enumerate(zip(chosen, offsets, strict=True)):
        set_position(ds, origin + per_mm * off)
        if thickness:
            ds.SliceThickness = thickness[k]
        if "SpacingBetweenSlices" in ds:
            del ds.SpacingBetweenSlices
    return chosen


def repeat_at_same_positions(
    slices: Sequence[Dataset], keyword: str | None, values: tuple[str, str]
) -> list[Dataset]:
    """Two acquisitions at the same positions: the slices, and copies carrying the pixel data of
    each slice's neighbour (real, but different), told apart by ``keyword`` (``None``: only
    by ContentTime and InstanceNumber)."""
    first = [copy.deepcopy(ds) for ds in slices]
    second = []
    for k, ds in enumerate(slices):
        twin = copy.deepcopy(ds)
        twin.PixelData = slices[(k + 1) % len(slices)].PixelData
        second.append(twin)
    for group, value, hour in ((first, values[0], "10"), (second, values[1], "11")):
        for k, ds in enumerate(group):
            if keyword is not None:
                setattr(ds, keyword, value)
            ds.ContentTime = f"{hour}{k // 60:02d}{k % 60:02d}.000"
            ds.AcquisitionTime = ds.ContentTime
    return first + second


def rotate(slices: Sequence[Dataset], rotation: np.ndarray) -> list[Dataset]:
    """The series turned rigidly in patient space: IOP and IPP rotated consistently."""
    out = []
    for original in slices:
        ds = copy.deepcopy(original)
        iop = floats(ds.ImageOrientationPatient)
        row, col = rotation @ iop[:3], rotation @ iop[3:]
        ds.ImageOrientationPatient = [round(float(v), 8) for v in (*row, *col)]
        set_position(ds, rotation @ floats(ds.ImagePositionPatient))
        out.append(ds)
    return out


def rotation(x_deg: float, y_deg: float, z_deg: float) -> np.ndarray:
    def axis(i: int, deg: float) -> np.ndarray:
        c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
        j, k = [a for a in range(3) if a != i]
        r = np.eye(3)
        r[j, j], r[j, k], r[k, j], r[k, k] = c, -s, s, c
        return r

    return axis(2, z_deg) @ axis(1, y_deg) @ axis(0, x_deg)


def crop(ds: Dataset, rows: int, cols: int) -> Dataset:
    """The top-left ``rows`` x ``cols`` of a real slice (same origin, same pixel spacing)."""
    ds = copy.deepcopy(ds)
    ds.PixelData = np.ascontiguousarray(ds.pixel_array[:rows, :cols]).tobytes()
    ds.Rows, ds.Columns = rows, cols
    return ds


def write(datasets: Sequence[Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def straight(testdata: Path) -> list[Dataset]:
    return read_series(testdata, STRAIGHT)


def missing(*dropped: int) -> Callable[[Path], list[Dataset]]:
    def build(testdata: Path) -> list[Dataset]:
        slices = new_series(straight(testdata), "missing slices")
        return [ds for k, ds in enumerate(slices) if k not in dropped]  # numbers keep their hole

    return build


def with_localizer(testdata: Path) -> list[Dataset]:
    localizer = dcmread(testdata / LOCALIZER)
    return new_series([localizer, *straight(testdata)], "localizer inside")


def repeated(keyword: str | None, values: tuple[str, str]) -> Callable[[Path], list[Dataset]]:
    def build(testdata: Path) -> list[Dataset]:
        both = repeat_at_same_positions(straight(testdata)[:12], keyword, values)
        return new_series(both, f"two acquisitions by {keyword or 'ContentTime'}")

    return build
