"""Provenance of every result object, in one place: UIDs, equipment, algorithm, observer, time.

- UIDs are name-based (RFC 9562 v5 UUIDs in the 2.25 form), derived from the input instance set,
  the model's name and version, and what makes the object's content differ (its variant), so a
  re-run or a re-send is the same object at the PACS: idempotent.
- ContributingEquipment names the node and the model; the times carry the node's UTC offset.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import datetime

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID

from dicom_node import __version__
from workers.inference.manifest import Code, Manifest

MANUFACTURER = "dicom-node"
SOFTWARE = f"dicom-node {__version__}"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/dicom-node/dicom-node/results")


def content_digest(*parts: bytes | str) -> str:
    """What an object says, as part of its identity: a re-run that changes the content (the
    mask, the measurements, the weights) makes a new object with a new UID; one that changes
    nothing makes the same one again."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return f"content={digest.hexdigest()[:32]}"


def derived_uid(kind: str, manifest: Manifest, source_uids: Sequence[str], *variant: str) -> UID:
    """The same inputs, model and variant give the same UID.

    Not pydicom's ``generate_uid(prefix=None)``: it ignores its entropy sources and is random.
    """
    name = "\n".join([kind, manifest.name, manifest.version, *variant, "", *sorted(source_uids)])
    return UID(f"2.25.{uuid.uuid5(_NAMESPACE, name).int}")


def model_uid(manifest: Manifest) -> UID:
    """One UID per model version: the device observer's identity in every SR it writes."""
    name = "\n".join(["model", manifest.name, manifest.version])
    return UID(f"2.25.{uuid.uuid5(_NAMESPACE, name).int}")


def concept(code: Code) -> hd.sr.CodedConcept:
    """A manifest code as highdicom's coded concept."""
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def algorithm_family(manifest: Manifest) -> hd.sr.CodedConcept:
    """The manifest's algorithm family, else Artificial Intelligence (CID 7162)."""
    if manifest.family is not None:
        return concept(manifest.family)
    return hd.sr.CodedConcept.from_code(codes.cid7162.ArtificialIntelligence)


def algorithm_identification(manifest: Manifest) -> hd.AlgorithmIdentificationSequence:
    """The model's name, version and family for SEG segments and SR groups."""
    return hd.AlgorithmIdentificationSequence(
        name=manifest.name, version=manifest.version, family=algorithm_family(manifest)
    )


# IHE AI Results (AIR): the algorithm's own Contributing Equipment item has this purpose (the
# profile's provisional code; CID 7005 has no such concept yet)
PROCESSING_ALGORITHM = hd.sr.CodedConcept("Newcode1", "99IHE", "Processing Algorithm")


def contributing_equipment(
    manifest: Manifest, weights_sha256: str, at: datetime
) -> list[hd.ContributingEquipment]:
    """Two items, timezone-aware: the node as Processing Equipment, and the model as the
    Processing Algorithm (IHE AIR) with its version, weights digest and a Device UID that
    changes with each model version."""
    node = hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=MANUFACTURER,
        software_versions=SOFTWARE,
        contribution_datetime=at,
        contribution_description="AI result routing and DICOM encoding",
    )
    algorithm = hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,  # highdicom takes CID 7005 only
        manufacturer_model_name=manifest.name[:64],
        software_versions=[SOFTWARE, f"{manifest.name} {manifest.version}"[:64]],
        device_serial_number=weights_sha256[:16] or "0",
        contribution_datetime=at,
        contribution_description=(
            f"AI inference: {manifest.name} {manifest.version}, weights sha256 "
            f"{weights_sha256[:16]}"
        )[:64],
    )
    algorithm.PurposeOfReferenceCodeSequence = [PROCESSING_ALGORITHM]
    algorithm.DeviceUID = model_uid(manifest)
    return [node, algorithm]


def device_observer(manifest: Manifest, weights_sha256: str) -> hd.sr.ObserverContext:
    """The observer of an AI result is the algorithm, never a person."""
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=model_uid(manifest),
            name=manifest.name[:64],
            manufacturer_name=MANUFACTURER,
            model_name=f"{manifest.name} {manifest.version}"[:64],
            serial_number=weights_sha256[:16] or "0",
        ),
    )


def stamp(ds: Dataset, at: datetime) -> None:
    """Content and instance creation times in the node's local time, with the UTC offset given
    (Timezone Offset From UTC), so a reader in any zone places them exactly."""
    local = at.astimezone()
    offset = local.strftime("%z")
    ds.ContentDate = ds.InstanceCreationDate = local.strftime("%Y%m%d")
    ds.ContentTime = ds.InstanceCreationTime = local.strftime("%H%M%S.%f")
    ds.TimezoneOffsetFromUTC = offset


def series_description(kind: str, manifest: Manifest) -> str:
    """Says it is AI output and names the model and version (LO: 64 characters)."""
    text = f"AI {kind} {manifest.name} {manifest.version}"
    if manifest.not_for_diagnostic_use:
        text += " NOT FOR DIAGNOSTIC USE"
    return text[:64]
