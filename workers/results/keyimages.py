"""Secondary Capture key images for PACS that cannot show a SEG (a per-destination profile).

The source frames with the largest segmented areas, windowed, with each segment's outline burned
in, in its display colour, under an "AI RESULT — NOT FOR DIAGNOSIS" banner. They are pictures, not
measurements: the SEG and SR remain the results of record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from workers.inference.decode import pixel_array
from workers.inference.manifest import Manifest
from workers.results.provenance import (
    MANUFACTURER,
    content_digest,
    contributing_equipment,
    derived_uid,
    series_description,
    stamp,
)
from workers.results.seg import Mask, ResultError, building

SC_SERIES_NUMBER = 9003
BANNER = "AI RESULT \u2014 NOT FOR DIAGNOSIS"
FONTS = (Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"),)


def _banner_font(size: int) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, str]:
    """DejaVu where installed (it has the em dash); else Pillow's own font, with a hyphen."""
    for path in FONTS:
        if path.is_file():
            return ImageFont.truetype(str(path), size), BANNER
    return ImageFont.load_default(size=size), BANNER.replace("\u2014", "-")


def key_frames(mask: Mask, count: int) -> list[int]:
    """Mask frame indices with the largest segmented areas, largest first; empty frames never."""
    areas = (mask.labels > 0).reshape(mask.labels.shape[0], -1).sum(axis=1)
    order = np.argsort(-areas, kind="stable")[:count]
    return [int(k) for k in order if areas[k] > 0]


def _window(ds: Dataset, values: np.ndarray, manifest: Manifest) -> tuple[float, float]:
    center, width = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    if center is not None and width is not None:
        c = float(center[0] if isinstance(center, Sequence) else center)
        w = float(width[0] if isinstance(width, Sequence) else width)
        if w > 1:
            return c - w / 2, c + w / 2
    if manifest.preprocessing.window is not None:
        return manifest.preprocessing.window
    low, high = np.percentile(values, [1, 99])
    return float(low), float(max(high, low + 1))


def _frame_pixels(ds: Dataset, path: Path | None, frame_number: int) -> np.ndarray:
    stored = pixel_array(ds, path)
    if frame_number:
        stored = stored[frame_number - 1]
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    return stored.astype(np.float32) * slope + intercept


def _shifted(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(a)
    h, w = a.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = a[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def outline(inside: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels of ``inside`` within ``width`` (4-connected steps) of its border."""
    core = inside.copy()
    for _ in range(width):
        core = core & _shifted(core, 1, 0) & _shifted(core, -1, 0)
        core = core & _shifted(core, 0, 1) & _shifted(core, 0, -1)
    return np.asarray(inside & ~core)


def render(
    values: np.ndarray, labels: np.ndarray, manifest: Manifest, window: tuple[float, float]
) -> np.ndarray:
    """RGB uint8: the windowed slice, each label's outline in its colour, the banner on top."""
    low, high = window
    grey = (np.clip((values - low) / (high - low), 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for label in manifest.labels:
        inside = labels == label.value
        if inside.any():
            rgb[outline(inside, max(1, labels.shape[1] // 256))] = label.color
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    size = max(10, labels.shape[1] // 28)
    font, text = _banner_font(size)
    band = size + size // 2
    draw.rectangle((0, 0, image.width, band), fill=(0, 0, 0))
    draw.text((size // 3, size // 4), text, fill=(255, 255, 0), font=font)
    return np.asarray(image)


def _orientation(ds: Dataset, frame_number: int) -> tuple[str, str]:
    """Patient Orientation: the row and column directions as L/R, A/P, H/F."""
    iop = getattr(ds, "ImageOrientationPatient", None)
    if iop is None:
        shared = ds.SharedFunctionalGroupsSequence[0]
        iop = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    v = np.array([float(x) for x in iop])

    def letters(d: np.ndarray) -> str:  # the dominant direction (highdicom takes one letter)
        i = int(np.argmax(np.abs(d)))
        return (("L", "R"), ("P", "A"), ("H", "F"))[i][0 if d[i] > 0 else 1]

    return letters(v[:3]), letters(v[3:])


def _source_item(ds: Dataset, frame_number: int) -> Dataset:
    """The source frame a key image shows (General Image module, Source Image Sequence)."""
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    if frame_number:
        item.ReferencedFrameNumber = frame_number
    return item


def build_key_images(
    sources: Mapping[str, Dataset],
    paths: Mapping[str, Path],
    mask: Mask,
    manifest: Manifest,
    *,
    count: int,
    weights_sha256: str,
    at: datetime,
) -> list[hd.sc.SCImage]:
    """Up to ``count`` SC images; ``sources`` and ``paths`` by SOP Instance UID."""
    images = []
    series_uid = derived_uid("sc-series", manifest, list(mask.sop_instance_uids), str(count))
    for number, k in enumerate(key_frames(mask, count), start=1):
        uid, frame = mask.sop_instance_uids[k], int(mask.frame_numbers[k])
        ds = sources[uid]
        values = _frame_pixels(ds, paths.get(uid), frame)
        if values.shape != mask.labels.shape[1:]:
            raise ResultError(f"key image {uid}: pixel shape differs from the mask")
        rgb = render(values, mask.labels[k], manifest, _window(ds, values, manifest))
        with building("key image"):
            sc = hd.sc.SCImage.from_ref_dataset(
                ref_dataset=ds,
                pixel_array=rgb,
                photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
                bits_allocated=8,
                coordinate_system=hd.CoordinateSystemNames.PATIENT,
                series_instance_uid=series_uid,
                series_number=SC_SERIES_NUMBER,
                sop_instance_uid=derived_uid(
                    "sc",
                    manifest,
                    list(mask.sop_instance_uids),
                    str(count),
                    str(number),
                    content_digest(rgb.tobytes(), weights_sha256),
                ),
                instance_number=number,
                manufacturer=MANUFACTURER,
                patient_orientation=_orientation(ds, frame),
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                contributing_equipment=contributing_equipment(manifest, weights_sha256, at),
            )
        sc.SeriesDescription = series_description("KEY IMAGES", manifest)
        # Type 2C in General Series; empty = unknown (the source did not say)
        sc.Laterality = getattr(ds, "Laterality", "")
        sc.BurnedInAnnotation = "YES"
        sc.ImageType = ["DERIVED", "SECONDARY"]
        sc.SourceImageSequence = [_source_item(ds, frame)]  # a viewer can open the frame itself
        stamp(sc, at)
        images.append(sc)
    return images
