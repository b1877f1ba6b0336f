"""The Key Object Selection, on four real CT slices: it flags each found segment's key slice
(once, in segment order), reads back with highdicom, passes dciodvfy, and a result with nothing
found makes no KOS at all (an empty selection is refused, with a clear error)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.sr.codedict import codes

from dicom_node.settings import BUILTIN_MODELS
from tests.helpers import dciodvfy_errors
from workers.inference.manifest import Manifest, load_manifest
from workers.results.errors import ResultError
from workers.results.kos import build_kos, key_sources
from workers.results.seg import Mask

AT = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest(BUILTIN_MODELS, "ct-tissue")[0]


@pytest.fixture(scope="module")
def sources(ct_dir: Path) -> list[Dataset]:
    return [dcmread(p) for p in sorted(p for p in ct_dir.iterdir() if p.name != "DIRFILE")[:4]]


def mask_with(sources: list[Dataset], per_frame: dict[int, dict[int, int]]) -> Mask:
    """``per_frame``: frame -> {label: pixels}, laid out in the first rows."""
    labels = np.zeros((len(sources), 64, 64), np.uint8)
    for k, areas in per_frame.items():
        start = 0
        for value, n in areas.items():
            labels[k].reshape(-1)[start : start + n] = value
            start += n
    uids = tuple(str(ds.SOPInstanceUID) for ds in sources)
    return Mask(labels, uids, (0,) * len(uids))


def test_each_found_segment_flags_its_key_slice_once(
    sources: list[Dataset], manifest: Manifest, tmp_path: Path
) -> None:
    # adipose largest on frame 2, soft tissue on frame 0, bone on frame 2 too, air nowhere
    mask = mask_with(sources, {0: {2: 50, 1: 5}, 2: {1: 40, 3: 30}, 3: {2: 10}})
    selected = key_sources({str(ds.SOPInstanceUID): ds for ds in sources}, mask, manifest)
    assert [ds.SOPInstanceUID for ds in selected] == [
        sources[2].SOPInstanceUID,  # adipose (segment 1), and bone
        sources[0].SOPInstanceUID,  # soft tissue
    ]
    kos = build_kos(selected, manifest, weights_sha256="ab" * 32, at=AT)
    path = tmp_path / "kos.dcm"
    kos.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    back = hd.ko.KeyObjectSelectionDocument.from_dataset(dcmread(path))
    assert back.ConceptNameCodeSequence[0].CodeValue == codes.DCM.OfInterest.value
    flagged = [
        i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for i in back.ContentSequence
        if i.ValueType == "IMAGE"
    ]
    assert flagged == [ds.SOPInstanceUID for ds in selected]
    again = build_kos(selected, manifest, weights_sha256="ab" * 32, at=AT)
    assert again.SOPInstanceUID == kos.SOPInstanceUID  # the same selection, the same object


def test_nothing_found_selects_nothing(sources: list[Dataset], manifest: Manifest) -> None:
    mask = mask_with(sources, {})
    assert key_sources({str(ds.SOPInstanceUID): ds for ds in sources}, mask, manifest) == []
    with pytest.raises(ResultError, match="cannot build KOS"):
        build_kos([], manifest, weights_sha256="ab" * 32, at=AT)
