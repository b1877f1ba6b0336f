"""CT tissue composition by Hounsfield ranges: the teacher of the ``ct-tissue`` model.

Steps, on the acquired frames (gantry tilt needs nothing: every step is per voxel or local):

1. **Body.** HU > ``BODY_HU`` (air/tissue boundary), opened in-plane to cut thin contacts
   (head holder, table pad), largest 3D connected component, then holes filled per frame
   (which fills those enclosed in 3D too), so enclosed air (sinuses, airways, lung) belongs to
   the body.
2. **Ranges** inside the body, after the conventions in the model card: air < -400 HU,
   adipose -190 … -30 HU, soft tissue -29 … 150 HU, bone ≥ 250 HU. The gaps (-400 … -191,
   151 … 249 HU: partial volume at interfaces) are left unlabelled.
3. **Clean-up.** A 3x3 in-plane majority vote over the labels removes single-voxel noise (on
   the whole frame: ``tissue``, what the CNN learns); then everything outside the body is
   unlabelled (``inside_body``, which the node applies to the CNN's output too), and connected
   pieces of a label smaller than ``MIN_PIECE_MM3`` go back to unlabelled. Deterministic: the
   same pixels always give the same labels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

BODY_HU = -500.0
AIR_MAX_HU = -400.0
ADIPOSE_HU = (-190.0, -30.0)
SOFT_HU = (-29.0, 150.0)
BONE_MIN_HU = 250.0
MIN_PIECE_MM3 = 20.0

# Label values, as the model's manifest numbers them.
ADIPOSE, SOFT_TISSUE, BONE, AIR = 1, 2, 3, 4
NAMES = {ADIPOSE: "adipose tissue", SOFT_TISSUE: "soft tissue", BONE: "bone", AIR: "air"}


def body_mask(hu: np.ndarray) -> np.ndarray:
    """The patient's body: the largest connected object above the air threshold, holes filled.

    Frame by frame where the step is in-plane (the opening, the hole filling, counting the
    pieces), so only the masks and one label image are study-sized. Filling each frame's holes
    also fills every hole enclosed in 3D (a cavity enclosed in 3D is enclosed in each frame it
    crosses), so no 3D fill is needed after it."""
    opening = np.ones((3, 3), dtype=bool)
    dense = np.empty(hu.shape, dtype=bool)
    for k in range(hu.shape[0]):
        dense[k] = ndimage.binary_opening(hu[k] > BODY_HU, structure=opening)
    # int32 labels: with a narrower output scipy labels into an int32 copy anyway (its
    # provisional labels overflow 16 bits), and holds both
    pieces, count = ndimage.label(dense)
    del dense
    if count == 0:
        return np.zeros(hu.shape, dtype=bool)
    # a frame at a time: bincount casts its input to int64, 8 bytes a voxel for the whole study
    sizes = np.zeros(count + 1, dtype=np.int64)
    for k in range(hu.shape[0]):
        sizes += np.bincount(pieces[k].ravel(), minlength=count + 1)
    sizes[0] = 0
    largest = int(np.argmax(sizes))
    body = np.empty(hu.shape, dtype=bool)
    for k in range(hu.shape[0]):
        body[k] = ndimage.binary_fill_holes(pieces[k] == largest)
    return body


def _majority(labels: np.ndarray, classes: int) -> np.ndarray:
    """3x3 in-plane mode of the label map; ties keep the lower label (deterministic)."""
    best = np.full(labels.shape, -1.0, dtype=np.float32)
    out = np.zeros(labels.shape, dtype=np.uint8)
    for value in range(classes):
        votes = ndimage.uniform_filter(
            (labels == value).astype(np.float32), size=(1, 3, 3), mode="nearest"
        )
        better = votes > best + 1e-6
        best[better] = votes[better]
        out[better] = value
    return out


def tissue(hu: np.ndarray) -> np.ndarray:
    """The Hounsfield ranges everywhere (air around the patient is "air" here), then the 3x3
    majority vote: what the CNN learns. ``label`` keeps it inside the body."""
    hu = np.asarray(hu, dtype=np.float32)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    labels[hu < AIR_MAX_HU] = AIR
    labels[(hu >= ADIPOSE_HU[0]) & (hu <= ADIPOSE_HU[1])] = ADIPOSE
    labels[(hu >= SOFT_HU[0]) & (hu <= SOFT_HU[1])] = SOFT_TISSUE
    labels[hu >= BONE_MIN_HU] = BONE
    return _majority(labels, 5)


def inside_body(labels: np.ndarray, hu: np.ndarray) -> np.ndarray:
    """``labels`` with everything outside the body unlabelled (the node's post-processing step
    for the ct-tissue model: ``[postprocessing] mask`` in its manifest)."""
    out = np.where(body_mask(hu), labels, 0).astype(np.uint8)
    return out


def label(hu: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """uint8 labels [slice, row, column] for HU volume ``hu``; ``spacing_mm`` is (slice gap,
    row, column) and sets the smallest piece kept."""
    labels = inside_body(tissue(hu), hu)
    voxel_mm3 = float(np.prod(spacing_mm))
    min_voxels = max(1, int(np.ceil(MIN_PIECE_MM3 / voxel_mm3)))
    for value in NAMES:
        pieces, count = ndimage.label(labels == value)
        if count == 0:
            continue
        small = np.bincount(pieces.ravel()) < min_voxels
        small[0] = False
        labels[small[pieces]] = 0
    return labels
