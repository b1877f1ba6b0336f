"""Sliding-window inference a slab of the model grid at a time, and its mapping onto the source
frames as the slabs come: the worker's memory follows the window, not the study (issue 18).

``windows`` runs MONAI's ``sliding_window_inference`` (gaussian blending) as the node calls it:
the same windows (MONAI's ``dense_patch_slices`` on the padded grid, MONAI's scan interval), in
the same order and batches, each prediction weighted by the same importance map and added to
the output and the count in the same order. A plane of the output is final once the last
window over it has run (windows go along the slices in order), so it is divided, handed on and
dropped then: the whole-grid output is never held. The numbers are MONAI's, which the tests
check against ``sliding_window_inference`` itself.

``SourceMapper`` takes those planes and maps them onto each source frame with the arithmetic
of ``grid.to_source`` (the same interpolation weights, from the whole grid's indices), keeping
only the planes the frames still to come need.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - torch's own convention
from monai.data.utils import compute_importance_map, dense_patch_slices, get_valid_patch_size

from workers.inference.grid import (
    ModelGrid,
    SourceMaps,
    _along_slices,
    _as_uint8,
    _exact_identity,
    argmax_channels,
)

Predictor = Callable[[torch.Tensor], torch.Tensor]
SIGMA_SCALE = 0.125  # sliding_window_inference's default


def scan_interval(image: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> tuple[int, ...]:
    """MONAI's scan interval: ``int(roi x (1 - overlap))`` (at least 1), or the roi itself
    along an axis the roi spans exactly."""
    return tuple(
        r if r == s else max(1, int(r * (1 - overlap))) for s, r in zip(image, roi, strict=True)
    )


def windows(
    predict: Predictor,
    x: torch.Tensor,
    roi: tuple[int, int, int],
    batch: int,
    overlap: float,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(first plane, output [1, C, n, h, w]) for consecutive planes of the model grid ``x``
    [1, 1, d, h, w], as ``sliding_window_inference(x, roi, batch, predict, overlap,
    mode="gaussian")`` computes them for the whole grid."""
    size = tuple(int(s) for s in x.shape[2:])
    roi = tuple(r if r > 0 else s for r, s in zip(roi, size, strict=True))  # type: ignore[assignment]
    image = tuple(max(s, r) for s, r in zip(size, roi, strict=True))
    pad: list[int] = []  # F.pad's order: the last axis first
    for axis in (2, 1, 0):
        diff = max(roi[axis] - size[axis], 0)
        pad += [diff // 2, diff - diff // 2]
    xp = F.pad(x, pad=pad, mode="constant", value=0.0) if any(pad) else x
    slices = dense_patch_slices(image, roi, scan_interval(image, roi, overlap))
    weight = compute_importance_map(
        get_valid_patch_size(image, roi),
        mode="gaussian",
        sigma_scale=SIGMA_SCALE,
        device=x.device,
        dtype=x.dtype,
    )[None, None]
    front, inplane = pad[4], (slice(pad[2], pad[2] + size[1]), slice(pad[0], pad[0] + size[2]))
    acc: torch.Tensor | None = None  # planes [lo, lo + depth) of the padded output
    count = torch.zeros((1, 1, 0, *image[1:]), dtype=x.dtype, device=x.device)
    lo = 0
    for g in range(0, len(slices), batch):
        group = slices[g : g + batch]
        data = torch.cat([xp[(slice(None), slice(None), *s)] for s in group])
        out = predict(data)
        if tuple(out.shape[2:]) != roi:
            raise ValueError(f"the model's output {tuple(out.shape[2:])} is not its window {roi}")
        out *= weight
        top = max(s[0].stop for s in group)
        if acc is None:
            acc = torch.zeros((1, out.shape[1], 0, *image[1:]), dtype=x.dtype, device=x.device)
        if top - lo > acc.shape[2]:  # more planes: grow the rolling buffers
            grow = top - lo - acc.shape[2]
            acc = torch.cat([acc, acc.new_zeros((*acc.shape[:2], grow, *acc.shape[3:]))], dim=2)
            count = torch.cat(
                [count, count.new_zeros((*count.shape[:2], grow, *count.shape[3:]))], dim=2
            )
        for s, p in zip(group, out, strict=True):
            local = (slice(s[0].start - lo, s[0].stop - lo), s[1], s[2])
            count[(slice(None), slice(None), *local)] += weight
            acc[(slice(0, 1), slice(None), *local)] += p
        done = slices[g + batch][0].start if g + batch < len(slices) else image[0]
        if done > lo:
            planes = acc[:, :, : done - lo] / count[:, :, : done - lo]
            first, last = max(lo, front), min(done, front + size[0])
            if last > first:
                yield first - front, planes[:, :, first - lo : last - lo, inplane[0], inplane[1]]
            acc, count = acc[:, :, done - lo :].clone(), count[:, :, done - lo :].clone()
            lo = done


class SourceMapper:
    """The labels (and kept probabilities, and confidence) on each source frame, from the
    model grid's probability planes fed in order; what ``grid.to_source`` gives for the whole
    grid at once."""

    def __init__(
        self,
        grid: ModelGrid,
        *,
        sigmoid_label: int | None = None,
        keep_channels: tuple[int, ...] = (),
        confidence: bool = False,
        chunk: int = 16,
    ) -> None:
        n, rows, cols = grid.source_shape
        self.grid, self.sigmoid_label, self.keep, self.chunk = (
            grid,
            sigmoid_label,
            keep_channels,
            chunk,
        )
        self.labels = np.empty((n, rows, cols), dtype=np.uint8)
        self.kept = (
            np.empty((len(keep_channels), n, rows, cols), dtype=np.uint8) if keep_channels else None
        )
        self.sure = np.empty((n, rows, cols), dtype=np.uint8) if confidence else None
        self.identity = _exact_identity(grid.model_index) and grid.shape[0] == n
        depth = grid.shape[0]
        lower = np.clip(np.floor(grid.model_index).astype(np.int64), 0, max(0, depth - 2))
        # the planes each source frame's interpolation reads
        self.needs = (np.arange(n) if self.identity else np.minimum(lower + 1, depth - 1)).astype(
            np.int64
        )
        self.first = np.arange(n) if self.identity else lower
        self.buffer: torch.Tensor | None = None  # planes [start, start + len) of [C, d, h, w]
        self.start = 0
        self.fed = 0  # planes [0, fed) have come
        self.next = 0  # the next source frame to map

    def feed(self, start: int, planes: torch.Tensor) -> None:
        """Planes ``start`` on ([C, n, h, w]), right after the ones fed before."""
        if start != self.fed:
            raise ValueError(f"planes from {start} fed after planes up to {self.fed}")
        if self.buffer is None or self.buffer.shape[1] == 0:
            self.buffer, self.start = planes, start
        else:
            self.buffer = torch.cat([self.buffer, planes], dim=1)
        self.fed = start + planes.shape[1]
        self._map(upto=self.fed)

    def finish(self) -> SourceMaps:
        """The maps, once every plane has been fed."""
        depth = self.grid.shape[0]
        if self.fed != depth or self.next != len(self.labels):
            raise RuntimeError(
                f"planes {self.fed} of {depth} came: {len(self.labels) - self.next} source "
                "frames were never mapped"
            )
        return SourceMaps(self.labels, self.kept, self.sure)

    def _map(self, upto: int) -> None:
        n, rows, cols = self.grid.source_shape
        assert self.buffer is not None  # noqa: S101 - fed before
        while self.next < n and self.needs[self.next] < upto:
            stop = self.next
            while stop < n and stop - self.next < self.chunk and self.needs[stop] < upto:
                stop += 1
            start = self.next
            if self.identity:
                part = self.buffer[:, start - self.start : stop - self.start]
            else:
                part = _along_slices(
                    self.buffer, self.grid.model_index[start:stop], 1, offset=self.start
                )
            if part.shape[-2:] != (rows, cols):
                part = F.interpolate(
                    part.transpose(0, 1), size=(rows, cols), mode="bilinear", align_corners=True
                ).transpose(0, 1)
            self._store(start, stop, part)
            self.next = stop
        if self.next < n:  # drop the planes no frame still to come reads
            keep_from = int(self.first[self.next])
            if keep_from > self.start:
                self.buffer = self.buffer[:, keep_from - self.start :].clone()
                self.start = keep_from

    def _store(self, start: int, stop: int, part: torch.Tensor) -> None:
        if self.sigmoid_label is not None:
            labels = (part[0] > 0.5).to(torch.uint8) * self.sigmoid_label
        else:
            labels = argmax_channels(part)
        self.labels[start:stop] = labels.cpu().numpy()
        if self.kept is not None:
            self.kept[:, start:stop] = _as_uint8(part[list(self.keep)])
        if self.sure is not None:
            top = (
                torch.maximum(part[0], 1 - part[0])
                if self.sigmoid_label is not None
                else part.amax(0)
            )
            self.sure[start:stop] = _as_uint8(top)
