"""Inference a slab at a time (``workers.inference.windows``) gives MONAI's numbers to the bit:
the slabs put together are ``sliding_window_inference`` on the whole grid, for windows that fit
and windows larger than the grid (padding), one window per batch or several, any overlap; and
the labels, kept probabilities and confidence mapped from the slabs as they come are
``to_source`` of the whole grid, for evenly and unevenly spaced slices and a sigmoid output.
The models are small real 3D convolution networks with fixed seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from workers.inference.grid import ModelGrid, to_source
from workers.inference.windows import SourceMapper, windows


def network(seed: int, channels: int = 5) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv3d(4, channels, 3, padding=1),
    ).eval()


@pytest.mark.parametrize(
    ("shape", "roi", "batch", "overlap"),
    [
        ((40, 24, 20), (8, 16, 16), 1, 0.25),
        ((40, 24, 20), (8, 16, 16), 3, 0.5),
        ((37, 12, 10), (16, 16, 16), 2, 0.25),  # the window is wider than the grid in-plane
        ((5, 30, 30), (8, 12, 12), 1, 0.25),  # and deeper than the grid
        ((16, 16, 16), (16, 16, 16), 1, 0.25),  # one window exactly
        ((61, 20, 18), (10, 20, 18), 4, 0.7),
    ],
)
def test_the_slabs_are_monai_s_whole_grid_output(
    shape: tuple[int, int, int], roi: tuple[int, int, int], batch: int, overlap: float
) -> None:
    net = network(sum(shape))
    x = torch.randn(1, 1, *shape)
    with torch.inference_mode():
        whole = sliding_window_inference(x, roi, batch, net, overlap=overlap, mode="gaussian")
        parts = list(windows(net, x, roi, batch, overlap))
    starts = [s for s, _ in parts]
    assert starts == sorted(starts) and starts[0] == 0
    assert len(parts) > 1 or shape[0] <= roi[0]  # it does go a slab at a time
    joined = torch.cat([p for _, p in parts], dim=2)
    assert joined.shape == whole.shape
    assert torch.equal(joined, whole)


def grid_for(n: int, depth: int, uneven: bool, seed: int) -> ModelGrid:
    rng = np.random.default_rng(seed)
    positions = np.cumsum(rng.uniform(0.5, 3.0, n)) if uneven else np.arange(n, dtype=float)
    model_index = (positions - positions[0]) / (positions[-1] - positions[0]) * (depth - 1)
    return ModelGrid((n, 13, 11), (depth, 9, 7), (1, 1, 1), np.zeros(depth), model_index)


@pytest.mark.parametrize("uneven", [False, True])
@pytest.mark.parametrize(("n", "depth"), [(23, 9), (9, 23), (7, 7), (2, 2)])
def test_mapping_slab_by_slab_is_to_source_of_the_whole_grid(
    n: int, depth: int, uneven: bool
) -> None:
    grid = grid_for(n, depth, uneven, n * depth)
    torch.manual_seed(n + depth)
    probs = torch.softmax(torch.randn(1, 5, depth, 9, 7) * 4, dim=1)
    want = to_source(probs, grid, keep_channels=(1, 3), confidence=True)
    for sizes in ([depth], [1] * depth, [3, 1, 4, 1, 5, 9, 2, 6][: max(1, depth // 2)]):
        mapper = SourceMapper(grid, keep_channels=(1, 3), confidence=True, chunk=4)
        start, k = 0, 0
        while start < depth:  # the sizes over and over, the last slab cut to what is left
            size = min(sizes[k % len(sizes)], depth - start)
            mapper.feed(start, probs[0, :, start : start + size])
            start, k = start + size, k + 1
        got = mapper.finish()
        assert np.array_equal(got.labels, want.labels), sizes
        assert got.kept is not None and want.kept is not None
        assert np.array_equal(got.kept, want.kept)
        assert got.confidence is not None and want.confidence is not None
        assert np.array_equal(got.confidence, want.confidence)
        assert mapper.buffer is not None and mapper.buffer.shape[1] <= max(sizes) + 2


def test_a_sigmoid_output_maps_to_its_label_slab_by_slab() -> None:
    grid = grid_for(17, 8, True, 5)
    probs = torch.sigmoid(torch.randn(1, 1, 8, 9, 7) * 3)
    want = to_source(probs, grid, sigmoid_label=3, confidence=True)
    mapper = SourceMapper(grid, sigmoid_label=3, confidence=True)
    for start in range(0, 8, 3):
        mapper.feed(start, probs[0, :, start : start + 3])
    got = mapper.finish()
    assert np.array_equal(got.labels, want.labels)
    assert got.confidence is not None and want.confidence is not None
    assert np.array_equal(got.confidence, want.confidence)
    assert set(np.unique(got.labels)) <= {0, 3}


def test_frames_left_unmapped_are_an_error() -> None:
    mapper = SourceMapper(grid_for(5, 4, False, 1))
    mapper.feed(0, torch.rand(5, 2, 9, 7))
    with pytest.raises(RuntimeError, match="never mapped"):
        mapper.finish()
