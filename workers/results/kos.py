"""A Key Object Selection of a result's key images, for PACS viewers that read neither SEG nor SR.

Such a viewer still flags the selected images in the study (IHE Key Image Note): here the source
slice where each segment is largest (the images the SR draws on) and the Secondary Capture key
images when the profile makes them. Document title "Of Interest" (CID 7010); the observer is the
algorithm. It goes after the objects it references.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from workers.inference.manifest import Manifest
from workers.results.provenance import (
    MANUFACTURER,
    contributing_equipment,
    derived_uid,
    device_observer,
    series_description,
    stamp,
)
from workers.results.regions import key_frame, label_areas
from workers.results.seg import Mask, building, ordered_labels

KOS_SERIES_NUMBER = 9005


def key_sources(sources: Mapping[str, Dataset], mask: Mask, manifest: Manifest) -> list[Dataset]:
    """Each segment's key source image (once, in segment order); segments without voxels none."""
    chosen: dict[str, Dataset] = {}
    areas = label_areas(mask)
    for label in ordered_labels(manifest):
        k = key_frame(mask, label.value, areas)
        if k is not None:
            uid = mask.sop_instance_uids[k]
            chosen.setdefault(uid, sources[uid])
    return list(chosen.values())


def build_kos(
    selected: Sequence[Dataset],
    manifest: Manifest,
    *,
    weights_sha256: str,
    at: datetime,
) -> hd.ko.KeyObjectSelectionDocument:
    """The selection of ``selected`` (source key images, then any SC key images)."""
    uids = [str(ds.SOPInstanceUID) for ds in selected]
    with building("KOS"):
        content = hd.ko.KeyObjectSelection(
            document_title=codes.DCM.OfInterest,
            referenced_objects=list(selected),
            observer_device_context=device_observer(manifest, weights_sha256),
            description=f"AI result key images: {manifest.name} {manifest.version}"[:1024],
        )
        kos = hd.ko.KeyObjectSelectionDocument(
            evidence=list(selected),
            content=content,
            series_instance_uid=derived_uid("kos-series", manifest, uids),
            series_number=KOS_SERIES_NUMBER,
            sop_instance_uid=derived_uid("kos", manifest, uids),
            instance_number=1,
            manufacturer=MANUFACTURER,
            contributing_equipment=contributing_equipment(manifest, weights_sha256, at),
        )
    kos.SeriesDescription = series_description("KEY OBJECTS", manifest)
    stamp(kos, at)
    return kos
