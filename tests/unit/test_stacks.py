"""Series -> stacks -> slice layout from headers alone (``dicom_node.jobs.stacks``), on frame
headers built here: each pattern the input-pattern suite re-composes from real slices, taken
apart one rule at a time."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicom_node.jobs.stacks import (
    FrameHeader,
    FrameRef,
    GeometryError,
    Stack,
    layout,
    read_headers,
    spacing_summary,
    split_stacks,
)

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def frame(
    n: int,
    z: float,
    *,
    orientation: tuple[float, ...] = AXIAL,
    y: float = 0.0,
    shape: tuple[int, int] = (64, 64),
    thickness: float | None = 2.5,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    keys: dict[str, str] | None = None,
    time: str | None = None,
    mosaic: bool = False,
) -> FrameHeader:
    return FrameHeader(
        ref=FrameRef(f"1.2.3.{n}", None),
        instance_number=n,
        position=np.array([0.0, y, z]),
        orientation=np.array(orientation),
        shape=shape,
        spacing=(0.5, 0.5),
        thickness=thickness,
        image_type=image_type,
        keys=keys or {},
        time=time,
        mosaic=mosaic,
    )


def uniform(n: int, step: float = 2.5, start: int = 1) -> list[FrameHeader]:
    return [frame(start + i, i * step) for i in range(n)]


def only(stacks: list[Stack]) -> Stack:
    assert len(stacks) == 1, [s.label for s in stacks]
    return stacks[0]


# --- splitting ------------------------------------------------------------------------------


def test_a_plain_axial_series_is_one_stack_sorted_along_the_normal() -> None:
    frames = uniform(10)
    stack = only(split_stacks(list(reversed(frames))))
    assert [f.instance_number for f in stack.frames] == list(range(1, 11))
    assert stack.refusal is None and stack.notes == ()
    assert stack.label == "stack 1, axial, 64x64, 10 frames"


def test_a_localizer_is_a_stack_of_its_own() -> None:
    scout = frame(1, 0.0, orientation=SAGITTAL, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    stacks = split_stacks([scout, *uniform(8, start=2)])
    assert [s.label for s in stacks] == [
        "stack 1, sagittal, 64x64, 1 frame, localizer",
        "stack 2, axial, 64x64, 8 frames",
    ]


def test_a_second_matrix_size_is_a_second_stack() -> None:
    small = [frame(20 + i, i * 2.5, shape=(32, 32)) for i in range(4)]
    stacks = split_stacks([*uniform(5), *small])
    assert [(s.number, len(s.frames), s.frames[0].shape) for s in stacks] == [
        (1, 5, (64, 64)),
        (2, 4, (32, 32)),
    ]


def test_repeated_acquisitions_are_told_apart_by_their_echo_number() -> None:
    echoes = [
        frame(10 * e + i, i * 2.5, keys={"EchoNumbers": str(e)}) for e in (1, 2) for i in range(6)
    ]
    stacks = split_stacks(echoes)
    assert [s.distinguished_by for s in stacks] == [
        (("EchoNumbers", "1"),),
        (("EchoNumbers", "2"),),
    ]
    assert all(len(s.frames) == 6 and s.refusal is None for s in stacks)
    assert "EchoNumbers 2" in stacks[1].label


def test_a_value_per_slice_is_not_an_acquisition_split() -> None:
    """AcquisitionNumber that changes every slice (one per rotation) leaves the stack whole."""
    frames = [frame(i, i * 2.5, keys={"AcquisitionNumber": str(i)}) for i in range(1, 9)]
    stack = only(split_stacks(frames))
    assert stack.distinguished_by == () and len(stack.frames) == 8


def test_repeats_with_nothing_but_time_are_ranked_into_time_points() -> None:
    frames = [frame(10 * t + i, i * 2.5, time=f"12000{t}") for t in (1, 2, 3) for i in range(4)]
    stacks = split_stacks(frames)
    assert [s.distinguished_by for s in stacks] == [(("time point", str(k)),) for k in (1, 2, 3)]
    assert [f.time for f in stacks[2].frames] == ["120003"] * 4


def test_identical_duplicates_collapse_into_one_with_a_note() -> None:
    frames = uniform(5)
    copy = frame(99, frames[2].position[2])
    asked: list[str] = []

    def digest(ref: FrameRef) -> bytes:
        asked.append(ref.sop_instance_uid)
        return b"same"

    stack = only(split_stacks([*frames, copy], digest))
    assert len(stack.frames) == 5
    assert stack.notes == (
        "instance 99 duplicates instance 3 (same position and pixel data): collapsed into one",
    )
    assert sorted(asked) == ["1.2.3.3", "1.2.3.99"]  # only the frames that share a position


def test_two_different_frames_at_one_position_with_nothing_to_tell_them_apart_are_refused() -> None:
    frames = [*uniform(5), frame(99, 5.0)]
    stack = only(split_stacks(frames, lambda ref: ref.sop_instance_uid.encode()))
    assert stack.refusal is not None
    assert "two frames share one slice position: instance 3 and instance 99 at 5.00 mm" in (
        stack.refusal
    )
    with pytest.raises(GeometryError, match="share one slice position"):
        layout(stack)


def test_origins_off_one_line_are_refused_with_the_frame_and_distance() -> None:
    frames = uniform(6)
    frames[3] = frame(4, 7.5, y=3.0)
    stack = only(split_stacks(frames))
    assert stack.refusal is not None
    assert "instance 4 is 3.00 mm off the line from instance 1 to instance 6" in stack.refusal


def test_a_mosaic_is_refused_as_not_one_volume() -> None:
    stack = only(split_stacks([frame(1, 0.0, mosaic=True)]))
    assert stack.refusal is not None and "Siemens mosaic" in stack.refusal


# --- layout ---------------------------------------------------------------------------------


def test_a_uniform_stack_has_one_spacing_and_no_tilt() -> None:
    lay = layout(only(split_stacks(uniform(10))))
    assert (lay.uniform, lay.spacing, lay.tilt_deg) == (True, "uniform 2.50 mm", 0.0)
    assert np.allclose(lay.positions_mm, np.arange(10) * 2.5)
    assert np.allclose(lay.extents_mm, 2.5)
    assert np.allclose(lay.step, [0, 0, 2.5])


def test_two_spacings_give_each_frame_its_real_extent() -> None:
    """The head CT pattern: 4 x 2.5 mm, then 5 mm slices."""
    frames = [frame(i + 1, z, thickness=None) for i, z in enumerate([0, 2.5, 5, 7.5, 10, 15, 20])]
    lay = layout(only(split_stacks(frames)))
    assert not lay.uniform
    assert lay.spacing == "4 x 2.50 mm + 2 x 5.00 mm"
    assert np.allclose(lay.extents_mm, [2.5, 2.5, 2.5, 2.5, 3.75, 5.0, 5.0])
    assert math.isclose(float(lay.extents_mm.sum()), 23.75)


def test_gantry_tilt_is_measured_from_the_origins_and_the_normal() -> None:
    tilt = math.radians(18.5)
    orientation = (1.0, 0.0, 0.0, 0.0, math.cos(tilt), math.sin(tilt))
    frames = [frame(i + 1, i * 5.0, orientation=orientation, thickness=5.0) for i in range(8)]
    lay = layout(only(split_stacks(frames)))
    assert math.isclose(lay.tilt_deg, 18.5, abs_tol=1e-6)
    assert np.allclose(lay.step, [0, 0, 5.0])  # the table moves straight; the plane is tilted
    assert lay.uniform and lay.spacing == f"uniform {5.0 * math.cos(tilt):.2f} mm"


def test_a_missing_slice_is_refused_with_both_sides_named() -> None:
    frames = [f for f in uniform(10) if f.instance_number != 6]
    stack = only(split_stacks(frames))
    with pytest.raises(GeometryError) as caught:
        layout(stack)
    message = str(caught.value)
    assert "slices missing between instance 5 (at 10.00 mm) and instance 7 (at 15.00 mm)" in (
        message
    )
    assert "a gap of 5.00 mm (about 1 slice of 2.50 mm)" in message
    assert "interpolate_gaps_mm" in message


def test_a_rule_may_allow_interpolation_across_a_gap() -> None:
    frames = [f for f in uniform(10) if f.instance_number not in (6, 7)]
    stack = only(split_stacks(frames))
    with pytest.raises(GeometryError, match="about 2 slices"):
        layout(stack, interpolate_gaps_mm=5.0)
    lay = layout(stack, interpolate_gaps_mm=7.5)
    assert lay.notes == (
        "interpolated across a gap of 7.50 mm between instance 5 (at 10.00 mm) and instance 8 "
        "(at 17.50 mm)",
    )


def test_a_gap_within_the_tolerance_is_contiguous() -> None:
    frames = [frame(1, 0.0), frame(2, 2.5), frame(3, 6.0), frame(4, 8.5)]  # 3.5 <= 1.5 x 2.5
    assert layout(only(split_stacks(frames))).spacing == "1 x 2.50 mm + 1 x 3.50 mm + 1 x 2.50 mm"
    with pytest.raises(GeometryError):
        layout(only(split_stacks(frames)), gap_tolerance=1.2)


def test_one_slice_is_its_own_layout() -> None:
    lay = layout(only(split_stacks([frame(1, 4.0, thickness=3.0)])))
    assert (lay.spacing, lay.uniform, float(lay.extents_mm[0])) == ("one slice", True, 3.0)


def test_spacing_summaries() -> None:
    assert spacing_summary(np.array([])) == "one slice"
    assert spacing_summary(np.array([2.5, 2.5, 2.505])) == "uniform 2.50 mm"
    assert spacing_summary(np.array([1.0, 2.0, 3.0, 4.0, 5.0])) == (
        "irregular 1.00-5.00 mm (mean 3.00 mm)"
    )


# --- headers --------------------------------------------------------------------------------


def single_frame(**values: object) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = 7
    ds.Rows, ds.Columns = 32, 48
    ds.ImagePositionPatient = [1.0, 2.0, 3.0]
    ds.ImageOrientationPatient = list(AXIAL)
    ds.PixelSpacing = [0.7, 0.8]
    ds.SliceThickness = 1.25
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.EchoNumbers = 2
    ds.ContentTime = "101010"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def test_a_single_frame_header_is_read_from_the_top_level() -> None:
    [h] = read_headers(single_frame())
    assert (h.instance_number, h.shape, h.spacing, h.thickness) == (7, (32, 48), (0.7, 0.8), 1.25)
    assert np.allclose(h.position, [1, 2, 3]) and h.keys["EchoNumbers"] == "2"
    assert h.time == "101010" and not h.mosaic and h.where == "instance 7"


def test_a_frame_without_pixel_spacing_is_refused_by_name() -> None:
    ds = single_frame()
    del ds.PixelSpacing
    with pytest.raises(GeometryError, match="instance 7: PixelSpacing missing or malformed"):
        read_headers(ds)


def test_multi_frame_without_per_frame_groups_has_no_geometry() -> None:
    ds = single_frame(NumberOfFrames=4)
    with pytest.raises(GeometryError, match="without per-frame functional groups"):
        read_headers(ds)


def test_enhanced_frames_read_their_functional_groups() -> None:
    ds = single_frame(NumberOfFrames=3)
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        delattr(ds, keyword)
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = list(AXIAL)
    shared.PlaneOrientationSequence = [orientation]
    measures = Dataset()
    measures.PixelSpacing = [0.5, 0.5]
    measures.SliceThickness = 2.0
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for k in range(3):
        groups = Dataset()
        position = Dataset()
        position.ImagePositionPatient = [0.0, 0.0, 2.0 * k]
        groups.PlanePositionSequence = [position]
        per_frame.append(groups)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    headers = read_headers(ds)
    assert [h.ref.frame_number for h in headers] == [1, 2, 3]
    assert [float(h.position[2]) for h in headers] == [0.0, 2.0, 4.0]
    assert headers[1].where == "instance 7 frame 2"
    assert layout(only(split_stacks(headers))).spacing == "uniform 2.00 mm"
