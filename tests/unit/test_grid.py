"""The model grid and back (``workers.inference.grid``) on small volumes built here: the grid
spans the source box, uneven slices are sampled at the finest gap, and the output lands on
every source frame (labels, kept channels and confidence)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dicom_node.jobs.stacks import FrameRef
from workers.inference.grid import (
    argmax_channels,
    plan_grid,
    source_spacing,
    to_model_grid,
    to_source,
)
from workers.inference.volume import Volume

CPU = torch.device("cpu")


def volume(positions: list[float], rows: int = 8, cols: int = 8, pixel: float = 1.0) -> Volume:
    n = len(positions)
    array = np.stack([np.full((rows, cols), 10.0 * k, dtype=np.float32) for k in range(n)])
    affine = np.eye(4)
    affine[0, 0] = affine[1, 1] = pixel
    affine[2, 2] = (positions[-1] - positions[0]) / (n - 1) if n > 1 else 1.0
    gaps = np.diff(positions)
    return Volume(
        array=array,
        affine=affine,
        frames=tuple(FrameRef(f"1.2.3.{k}", None) for k in range(n)),
        positions_mm=np.array(positions, dtype=np.float64),
        uniform=bool(len(gaps) == 0 or np.allclose(gaps, gaps[0])),
        tilt_deg=0.0,
    )


def test_the_source_spacing_is_slice_gap_then_row_then_column() -> None:
    assert source_spacing(volume([0, 2, 4], pixel=0.5)) == (2.0, 0.5, 0.5)
    assert source_spacing(volume([0.0])) == (1.0, 1.0, 1.0)


def test_no_target_spacing_on_uniform_slices_is_the_identity() -> None:
    v = volume([0, 2.5, 5, 7.5])
    grid = plan_grid(v, None)
    assert grid.shape == grid.source_shape == (4, 8, 8)
    assert np.array_equal(grid.source_index, np.arange(4))
    x = to_model_grid(v, grid, CPU)
    assert x.shape == (1, 1, 4, 8, 8) and torch.equal(x[0, 0], torch.from_numpy(v.array))


def test_a_target_spacing_resamples_the_same_patient_box() -> None:
    v = volume([0, 2, 4, 6, 8], rows=9, cols=9, pixel=1.0)
    grid = plan_grid(v, (1.0, 2.0, 2.0))
    assert grid.shape == (9, 5, 5)
    assert grid.spacing_mm == (1.0, 2.0, 2.0)
    x = to_model_grid(v, grid, CPU)[0, 0]
    # slice values are 0, 10, 20...: a model slice halfway between two source slices is 5, 15...
    assert torch.allclose(x[:, 0, 0], torch.arange(9, dtype=torch.float32) * 5)


def test_uneven_slices_are_sampled_at_the_finest_gap() -> None:
    v = volume([0, 2.5, 5, 7.5, 12.5, 17.5])  # the two-spacing head CT: 2.5 mm, then 5 mm
    grid = plan_grid(v, None)
    assert grid.shape[0] == 8  # 17.5 mm at 2.5 mm: no source slice thinned out
    assert grid.spacing_mm[0] == pytest.approx(2.5)
    assert np.allclose(grid.model_index, [0, 1, 2, 3, 5, 7])  # each source slice on a model one


def test_the_finest_gap_is_capped_at_four_model_slices_per_source_slice() -> None:
    v = volume([0, 0.1, 10, 20])
    grid = plan_grid(v, None)
    mean_gap = 20 / 3
    assert grid.spacing_mm[0] >= mean_gap / 4 - 1e-9


def test_argmax_takes_the_first_channel_on_ties() -> None:
    probs = torch.tensor([[0.5, 0.2, 0.4], [0.5, 0.7, 0.1], [0.0, 0.1, 0.5]])[:, :, None]
    assert argmax_channels(probs)[:, 0].tolist() == [0, 1, 2]
    random = torch.rand(4, 3, 5, 6)
    assert torch.equal(argmax_channels(random), random.argmax(0).to(torch.uint8))


def test_the_output_lands_on_every_source_frame_through_a_resampled_grid() -> None:
    v = volume([0, 2.5, 5, 7.5, 12.5, 17.5])
    grid = plan_grid(v, (None, 2.0, 2.0))  # type: ignore[arg-type]
    d, h, w = grid.shape
    probs = torch.zeros(1, 2, d, h, w)
    probs[0, 0] = 1.0
    probs[0, 1, :, : h // 2] = 0.9  # label 1 on the top half, background on the bottom
    probs[0, 0, :, : h // 2] = 0.1
    maps = to_source(probs, grid, keep_channels=(1,), confidence=True, chunk=4)
    assert maps.labels.shape == (6, 8, 8) and maps.labels.dtype == np.uint8
    assert (maps.labels[:, 0] == 1).all() and (maps.labels[:, -1] == 0).all()
    assert maps.kept is not None and maps.kept.shape == (1, 6, 8, 8)
    assert maps.kept[0, :, 0].max() == round(0.9 * 255)
    assert maps.confidence is not None and int(maps.confidence[:, 0].min()) == round(0.9 * 255)


def test_a_sigmoid_channel_becomes_its_label_above_one_half() -> None:
    v = volume([0, 1, 2])
    grid = plan_grid(v, None)
    probs = torch.full((1, 1, 3, 8, 8), 0.2)
    probs[0, 0, 1] = 0.8
    maps = to_source(probs, grid, sigmoid_label=3, confidence=True)
    assert maps.labels[:, 0, 0].tolist() == [0, 3, 0]
    assert maps.confidence is not None
    assert maps.confidence[:, 0, 0].tolist() == [round(0.8 * 255)] * 3  # max(p, 1 - p)
    assert maps.kept is None


def test_a_single_slice_stays_a_single_slice() -> None:
    v = volume([4.0])
    grid = plan_grid(v, (2.0, 1.0, 1.0))
    assert grid.shape == (1, 8, 8)
    x = to_model_grid(v, grid, CPU)
    probs = torch.stack([1 - x[0, 0], x[0, 0]])[None]
    assert to_source(probs, grid).labels.shape == (1, 8, 8)
