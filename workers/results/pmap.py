"""The model's confidence as a DICOM Parametric Map: where the model is unsure.

Per source frame, the largest class probability the model gave each voxel (max softmax, 0..1),
stored as 32-bit floats (Float Pixel Data) with an identity Real World Value Mapping. OHIF
(through dcmjs) reads Parametric Maps of 32-bit data only, and then shows the map over the
source in its volume viewport; Slicer and Weasis read it too. Stored as 16-bit integers it was
half the size, and OHIF drew nothing ("Only works with 32 bit data, not 16"). A FRACTIONAL SEG
would carry the same numbers, but OHIF and Slicer do not display it (PITFALLS 19). The map
lands on the same frames as the SEG, in the same study.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import datetime

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from workers.inference.manifest import Manifest
from workers.results.provenance import (
    MANUFACTURER,
    SOFTWARE,
    content_digest,
    contributing_equipment,
    derived_uid,
    series_description,
    stamp,
)
from workers.results.seg import Mask, ResultError, building, frame_order

PM_SERIES_NUMBER = 9004
SCALE = 255  # the mask's confidence: 255 = probability 1.0


def _with_charset(ds: Dataset) -> Dataset:
    """highdicom's Parametric Map refuses an empty Specific Character Set (seen in dcmqi's CT):
    such a source gets a copy without it (the default repertoire, which is what empty means)."""
    if "SpecificCharacterSet" not in ds or ds.SpecificCharacterSet:
        return ds
    clean = copy.deepcopy(ds)
    del clean.SpecificCharacterSet
    return clean


def build_confidence_map(
    sources: Sequence[Dataset],
    mask: Mask,
    manifest: Manifest,
    *,
    weights_sha256: str,
    at: datetime,
) -> hd.pm.ParametricMap:
    """``sources`` as for the SEG; the mask must hold ``confidence`` (uint8, 255 = 1.0)."""
    if mask.confidence is None:
        raise ResultError("a confidence map was asked for, but the mask kept no confidence")
    order = frame_order(mask, sources)
    sources = [_with_charset(ds) for ds in sources]
    pixels = mask.confidence[order].astype(np.float32) / np.float32(SCALE)
    content = content_digest(pixels.tobytes(), weights_sha256)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="CONFIDENCE",
        lut_explanation="max softmax probability",
        unit=codes.UCUM.NoUnits,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
        quantity_definition=codes.DCM.Probability,
    )
    source_uids = list(mask.sop_instance_uids)
    with building("confidence map"):
        pm = hd.pm.ParametricMap(
            source_images=list(sources),
            pixel_array=pixels,
            series_instance_uid=derived_uid("pm-series", manifest, source_uids, "confidence"),
            series_number=PM_SERIES_NUMBER,
            sop_instance_uid=derived_uid("pm", manifest, source_uids, "confidence", content),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=manifest.name[:64],
            software_versions=SOFTWARE,
            device_serial_number="0",
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[mapping],
            voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
            content_label="AI_CONFIDENCE",
            content_description=(
                f"{manifest.name} {manifest.version} confidence: not for diagnostic use"
                if manifest.not_for_diagnostic_use
                else f"{manifest.name} {manifest.version} confidence"
            )[:64],
            series_description=series_description("CONFIDENCE", manifest),
            contributing_equipment=contributing_equipment(manifest, weights_sha256, at),
        )
    if "Laterality" not in pm:
        pm.Laterality = ""  # General Series, Type 2C: dciodvfy asks for it on OT; not paired
    stamp(pm, at)
    return pm
