"""The worker's memory savings change no number (issue 18, worker memory): the CT volume kept as
int16 holds the very HU values the float32 one did; the model grid built a chunk at a time,
the in-place window and softmax, the frame-at-a-time statistics and the frame-at-a-time body
mask each give what the whole-volume forms gave (kept here as the references)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from pydicom import dcmread
from scipy import ndimage

from workers.inference.grid import ModelGrid, _along_slices, _exact_identity, to_model_grid
from workers.inference.pipeline import _weighted_stats
from workers.inference.volume import Volume, _Pixels, _rescaled, load_series
from workers.labelers.ct_tissue import BODY_HU, body_mask

TILTED = "dcm_qa_ct/In/Philips/S21610/S2010"


def test_ct_stays_int16_with_the_same_hu_and_anything_else_is_float32(testdata) -> None:
    paths = sorted(p for p in (testdata / TILTED).iterdir() if p.name != "DIRFILE")
    volume = load_series(paths)
    assert volume.array.dtype == np.int16
    by_uid = {dcmread(p).SOPInstanceUID: p for p in paths}
    for k in (0, 27, 53):
        ds = dcmread(by_uid[volume.frames[k].sop_instance_uid])
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.array_equal(volume.array[k].astype(np.float32), hu)
    stored = np.array([[0, 4095]], dtype=np.uint16)
    assert _rescaled([_Pixels(stored, 1.0, -1024.0)]).dtype == np.int16
    for slope, intercept in ((0.5, 0.0), (1.0, -1024.5)):  # not integers: float32, exact
        out = _rescaled([_Pixels(stored, slope, intercept)])
        assert out.dtype == np.float32
        assert np.array_equal(out[0], stored.astype(np.float32) * slope + intercept)
    big = np.array([[0, 65535]], dtype=np.uint16)  # beyond int16 after the rescale: float32
    assert _rescaled([_Pixels(big, 1.0, 0.0)]).dtype == np.float32


def _whole_volume_model_grid(volume: Volume, grid: ModelGrid) -> torch.Tensor:
    """The model grid as it was built before: the whole volume in float32 at once."""
    x = torch.from_numpy(volume.array.astype(np.float32))
    _, h, w = grid.shape
    if (h, w) != grid.source_shape[1:]:
        x = F.interpolate(x[:, None], size=(h, w), mode="bilinear", align_corners=True)[:, 0]
    if not _exact_identity(grid.source_index):
        x = _along_slices(x, grid.source_index, 0)
    return x[None, None].contiguous()


@pytest.mark.parametrize("uneven", [False, True])
@pytest.mark.parametrize("depth", [2, 7, 40, 53])  # plan_grid: 2 or more from 2 or more
def test_the_model_grid_a_chunk_at_a_time_is_the_whole_volume_s(uneven: bool, depth: int) -> None:
    rng = np.random.default_rng(depth)
    n = 23
    array = rng.integers(-1024, 3000, size=(n, 24, 20)).astype(np.int16)
    positions = np.cumsum(rng.uniform(0.5, 3.0, n)) if uneven else np.arange(n, dtype=float)
    model_positions = np.linspace(positions[0], positions[-1], depth)
    source_index = np.interp(model_positions, positions, np.arange(n, dtype=np.float64))
    grid = ModelGrid((n, 24, 20), (depth, 17, 31), (1, 1, 1), source_index, np.zeros(n))
    volume = Volume(array, np.eye(4), (), positions, not uneven, 0.0)
    for chunk in (1, 3, 16, 64):
        got = to_model_grid(volume, grid, torch.device("cpu"), chunk=chunk)
        assert torch.equal(got, _whole_volume_model_grid(volume, grid)), chunk
    same = ModelGrid((n, 24, 20), (n, 24, 20), (1, 1, 1), np.arange(n, dtype=float), np.zeros(n))
    got = to_model_grid(volume, same, torch.device("cpu"), chunk=5)
    assert torch.equal(got[0, 0], torch.from_numpy(array.astype(np.float32)))
    one = Volume(array[:1], np.eye(4), (), positions[:1], True, 0.0)  # a single slice
    flat = ModelGrid((1, 24, 20), (1, 12, 10), (1, 1, 1), np.zeros(1), np.zeros(1))
    assert torch.equal(
        to_model_grid(one, flat, torch.device("cpu")), _whole_volume_model_grid(one, flat)
    )


def test_in_place_softmax_is_torch_s() -> None:
    logits = torch.randn(1, 5, 6, 30, 30) * 8
    expected = torch.softmax(logits, dim=1)
    got = logits.clone()
    got -= got.amax(dim=1, keepdim=True)
    got.exp_()
    got.div_(got.sum(dim=1, keepdim=True))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    assert torch.equal(got.argmax(1), expected.argmax(1))


def test_frame_at_a_time_statistics_are_the_whole_volume_s() -> None:
    rng = np.random.default_rng(3)
    values = rng.integers(-1000, 1500, size=(30, 40, 40)).astype(np.int16)
    labels = rng.integers(0, 4, size=values.shape).astype(np.uint8)
    labels[5] = 0  # a frame without the label
    extents = rng.uniform(0.5, 5.0, 30)
    for value in (1, 2, 3):
        counts, mean, std = _weighted_stats(values, labels, value, extents)
        inside = labels == value
        weights = np.broadcast_to(extents[:, None, None], inside.shape)[inside]
        expected = values[inside].astype(np.float64)
        ref_mean = np.average(expected, weights=weights)
        ref_std = np.sqrt(np.average((expected - ref_mean) ** 2, weights=weights))
        assert counts.tolist() == inside.reshape(30, -1).sum(axis=1).tolist()
        assert mean == pytest.approx(ref_mean, rel=1e-12)
        assert std == pytest.approx(ref_std, rel=1e-9)
    assert _weighted_stats(values, labels, 9, extents)[1:] == (None, None)


def _whole_volume_body_mask(hu: np.ndarray) -> np.ndarray:
    """The body mask as it was computed before: 3D opening, int32 labels, a 3D fill at the end."""
    dense = ndimage.binary_opening(hu > BODY_HU, structure=np.ones((1, 3, 3), dtype=bool))
    pieces, count = ndimage.label(dense)
    if count == 0:
        return np.zeros(hu.shape, dtype=bool)
    sizes = np.bincount(pieces.ravel())
    sizes[0] = 0
    body = pieces == int(np.argmax(sizes))
    for k in range(body.shape[0]):
        body[k] = ndimage.binary_fill_holes(body[k])
    return ndimage.binary_fill_holes(body)  # type: ignore[no-any-return]


def test_the_frame_at_a_time_body_mask_is_the_whole_volume_one(testdata) -> None:
    paths = sorted(p for p in (testdata / TILTED).iterdir() if p.name != "DIRFILE")
    hu = load_series(paths).array
    body = body_mask(hu)
    assert body.any() and not body.all()
    assert np.array_equal(body, _whole_volume_body_mask(hu.astype(np.float32)))
    # a cavity closed in 3D but open in no frame cannot exist; one closed in every frame is filled
    shell = np.full((5, 20, 20), -1000, dtype=np.int16)
    shell[:, 2:18, 2:18] = 40
    shell[1:4, 6:14, 6:14] = -1000  # air inside: sinus-like
    assert body_mask(shell)[1:4, 6:14, 6:14].all()
    assert np.array_equal(body_mask(shell), _whole_volume_body_mask(shell))
    assert not body_mask(np.full((3, 8, 8), -1000, dtype=np.int16)).any()
