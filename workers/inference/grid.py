"""The model's grid and back: resample a source volume for the model, then map its output onto
every source frame, so the segmentation references the frames the scanner made.

The model grid spans the same patient box as the source (first and last sample centres on the
first and last source centres, ``align_corners`` semantics), with the manifest's spacing. Along
the slices it is evenly spaced between the first and last source slice positions, so non-uniform
series are handled by the same interpolation both ways. Gantry tilt needs nothing here: the
model sees the sheared grid exactly as acquired, and the output lands on the same sheared frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - torch's own convention

from workers.inference.volume import Volume

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class ModelGrid:
    source_shape: Shape  # (slices, rows, columns)
    shape: Shape  # the model grid
    spacing_mm: tuple[float, float, float]  # model grid spacing (slice, row, column)
    source_index: np.ndarray  # per model slice: continuous index into the source slices
    model_index: np.ndarray  # per source slice: continuous index into the model slices


def source_spacing(volume: Volume) -> tuple[float, float, float]:
    """(slice gap along the normal, row spacing, column spacing) in mm; mean gap if uneven."""
    dx = float(np.linalg.norm(volume.affine[:3, 0]))
    dy = float(np.linalg.norm(volume.affine[:3, 1]))
    positions = volume.positions_mm
    dz = float(np.mean(np.diff(positions))) if len(positions) > 1 else 1.0
    return dz, dy, dx


def _size(n: int, spacing: float, target: float | None) -> int:
    if target is None or n == 1:
        return n
    return max(2, round((n - 1) * spacing / target) + 1)


def plan_grid(volume: Volume, target_spacing: tuple[float, float, float] | None) -> ModelGrid:
    """The grid the model runs on: the manifest's target spacing per axis, else the source's (the
    finest gap for unevenly spaced slices), with the maps between source and model slices."""
    n, rows, cols = volume.array.shape
    spacing = source_spacing(volume)
    targets: tuple[float | None, ...] = target_spacing or (None, None, None)
    if targets[0] is None and not volume.uniform and n > 1:
        # no model spacing asked for, slices unevenly spaced: sample at the finest gap, so no
        # source slice is thinned out on the way in (capped at 4 model slices per source slice)
        finest = float(np.diff(volume.positions_mm).min())
        targets = (max(finest, spacing[0] / 4), *targets[1:])
    shape = (
        _size(n, spacing[0], targets[0]),
        _size(rows, spacing[1], targets[1]),
        _size(cols, spacing[2], targets[2]),
    )
    actual = tuple(
        (size_src - 1) * s / (size - 1) if size > 1 else s
        for size_src, s, size in zip((n, rows, cols), spacing, shape, strict=True)
    )
    positions = volume.positions_mm.astype(np.float64)
    d = shape[0]
    if n == 1:
        source_index, model_index = np.zeros(d), np.zeros(n)
    else:
        model_positions = np.linspace(positions[0], positions[-1], d)
        source_index = np.interp(model_positions, positions, np.arange(n, dtype=np.float64))
        model_index = (positions - positions[0]) / (positions[-1] - positions[0]) * (d - 1)
    return ModelGrid(
        (n, rows, cols),
        shape,
        (float(actual[0]), float(actual[1]), float(actual[2])),
        source_index,
        model_index,
    )


def _along_slices(
    array: torch.Tensor, index: np.ndarray, axis: int, offset: int = 0
) -> torch.Tensor:
    """Linear interpolation of ``array`` along ``axis`` at continuous positions ``index``;
    ``array`` holds the slices from ``offset`` on (weights from the whole volume's indices, so
    a part gives the very numbers the whole would)."""
    n = array.shape[axis]
    if n == 1:
        return array.index_select(
            axis, torch.zeros(len(index), dtype=torch.long, device=array.device)
        )
    lower = np.clip(np.floor(index).astype(np.int64), offset, offset + n - 2)
    weight = torch.as_tensor(index - lower, dtype=array.dtype, device=array.device)
    lo = torch.as_tensor(lower - offset, device=array.device)
    shape = [1] * array.ndim
    shape[axis] = len(index)
    weight = weight.reshape(shape)
    return array.index_select(axis, lo) * (1 - weight) + array.index_select(axis, lo + 1) * weight


def _exact_identity(index: np.ndarray) -> bool:
    return bool(np.array_equal(index, np.arange(len(index), dtype=np.float64)))


def to_model_grid(
    volume: Volume, grid: ModelGrid, device: torch.device, chunk: int = 16
) -> torch.Tensor:
    """[1, 1, slices, rows, columns] float32 on ``device``, on the model grid. Built ``chunk``
    model slices at a time from just the source slices they need (in-plane, then along the
    slices: the same arithmetic per voxel as on the whole volume), so only the model grid is
    ever held in float32, never the source volume."""
    n, rows, cols = grid.source_shape
    d, h, w = grid.shape
    source = torch.from_numpy(volume.array)
    identity = _exact_identity(grid.source_index) and d == n
    out = torch.empty((d, h, w), dtype=torch.float32, device=device)
    for start in range(0, d, chunk):
        stop = min(d, start + chunk)
        index = grid.source_index[start:stop]
        if identity:
            lo, hi = start, stop
        else:
            lo = 0 if n == 1 else min(max(0, int(np.floor(index.min()))), n - 2)
            hi = min(n, int(np.floor(index.max())) + 2)
        part = source[lo:hi].to(device=device, dtype=torch.float32)
        if (h, w) != (rows, cols):
            part = F.interpolate(part[:, None], size=(h, w), mode="bilinear", align_corners=True)
            part = part[:, 0]
        out[start:stop] = part if identity else _along_slices(part, index, 0, offset=lo)
    return out[None, None]


def argmax_channels(probs: torch.Tensor) -> torch.Tensor:
    """uint8 index of the largest channel (the first on ties), as ``argmax(dim=0)`` but in C
    elementwise passes: torch's CPU argmax over a short leading axis is ~100x slower."""
    best = probs[0].clone()
    labels = torch.zeros(probs.shape[1:], dtype=torch.uint8, device=probs.device)
    for c in range(1, probs.shape[0]):
        better = probs[c] > best
        best = torch.where(better, probs[c], best)
        labels.masked_fill_(better, c)
    return labels


class SourceMaps(NamedTuple):
    labels: np.ndarray  # uint8 [slices, rows, columns]
    kept: np.ndarray | None  # uint8 [channels, slices, rows, columns], 255 = 1.0
    confidence: np.ndarray | None  # uint8 [slices, rows, columns], 255 = 1.0


def _as_uint8(p: torch.Tensor) -> np.ndarray:
    return (p.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def to_source(
    probabilities: torch.Tensor,
    grid: ModelGrid,
    *,
    sigmoid_label: int | None = None,
    keep_channels: tuple[int, ...] = (),
    confidence: bool = False,
    chunk: int = 16,
) -> SourceMaps:
    """Per-source-frame labels (uint8 [slices, rows, columns]) from model-grid probabilities
    [1, C, d, h, w]: interpolated back onto each source frame, then argmax (or > 0.5 for a
    single sigmoid channel, which becomes ``sigmoid_label``). With ``keep_channels``, also
    those channels' probabilities on the source frames, for FRACTIONAL; with ``confidence``,
    the probability of the chosen class (max softmax; max(p, 1 - p) for a sigmoid)."""
    n, rows, cols = grid.source_shape
    probs = probabilities[0]
    out = np.empty((n, rows, cols), dtype=np.uint8)
    kept = np.empty((len(keep_channels), n, rows, cols), dtype=np.uint8) if keep_channels else None
    sure = np.empty((n, rows, cols), dtype=np.uint8) if confidence else None
    identity = _exact_identity(grid.model_index) and grid.shape[0] == n
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        if identity:
            part = probs[:, start:stop]
        else:
            part = _along_slices(probs, grid.model_index[start:stop], 1)
        if part.shape[-2:] != (rows, cols):
            part = F.interpolate(
                part.transpose(0, 1), size=(rows, cols), mode="bilinear", align_corners=True
            ).transpose(0, 1)
        if sigmoid_label is not None:
            labels = (part[0] > 0.5).to(torch.uint8) * sigmoid_label
        else:
            labels = argmax_channels(part)
        out[start:stop] = labels.cpu().numpy()
        if kept is not None:
            kept[:, start:stop] = _as_uint8(part[list(keep_channels)])
        if sure is not None:
            top = torch.maximum(part[0], 1 - part[0]) if sigmoid_label is not None else part.amax(0)
            sure[start:stop] = _as_uint8(top)
    return SourceMaps(out, kept, sure)
