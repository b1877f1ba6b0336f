"""Accept one C-STORE: check it, write it durably, index it. The handler maps the outcome.

Order matters: nothing is written before every check has passed, and Success is only possible
after the file is fsynced and renamed and its index row is committed.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import UID
from sqlalchemy.exc import DBAPIError

from dicom_node.db.models import utcnow
from dicom_node.domain import is_valid_uid, orientation_label
from dicom_node.storage import structure
from dicom_node.storage.errors import (
    DoesNotMatchRequestError,
    IndexUnavailableError,
    InvalidUIDError,
    MissingAttributeError,
    UIDConflictError,
    UnparseableError,
)
from dicom_node.storage.index import AssociationCache, Index, InstanceRecord
from dicom_node.storage.paths import InstanceKey, StorageLayout
from dicom_node.storage.writer import AtomicWriter


class Stored(enum.Enum):
    NEW = "new"
    DUPLICATE_KEPT_FIRST = "duplicate_kept_first"
    DUPLICATE_OVERWRITTEN = "duplicate_overwritten"


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """The parts of a C-STORE-RQ the node looks at."""

    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    transfer_syntax_uid: str
    dataset: Callable[[], Dataset]  # decoded lazily: parsing errors become a named status
    encoded: Callable[[], bytes]  # the data set exactly as received, with file meta
    association_id: str | None
    raw: Callable[[], memoryview] | None = None  # the data set as received, no file meta


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    stored: Stored
    key: InstanceKey
    size_bytes: int


class Intake:
    def __init__(
        self, layout: StorageLayout, writer: AtomicWriter, index: Index, *, overwrite: bool
    ) -> None:
        self.layout = layout
        self.writer = writer
        self.index = index
        self.overwrite = overwrite

    def accept(self, req: StoreRequest, cache: AssociationCache) -> StoreOutcome:
        """Check, write and index one C-STORE's data set; a refusal is a typed
        ``StorageRefusedError``."""
        for name in ("affected_sop_class_uid", "affected_sop_instance_uid"):
            if not is_valid_uid(getattr(req, name)):
                raise InvalidUIDError(f"invalid request {name}")
        _check_structure(req)
        ds = _decode(req)
        attrs = _attributes(ds)
        _check_matches_request(attrs, req)
        key = InstanceKey(
            study_uid=_required_uid(attrs, "StudyInstanceUID"),
            series_uid=_required_uid(attrs, "SeriesInstanceUID"),
            sop_instance_uid=req.affected_sop_instance_uid,
        )
        final = self.layout.path_for(key)
        written = self.writer.write(final, [req.encoded()], overwrite=self.overwrite)
        if not written.existed:
            stored = Stored.NEW
        elif self.overwrite:
            stored = Stored.DUPLICATE_OVERWRITTEN
        else:
            stored = Stored.DUPLICATE_KEPT_FIRST
        rec = InstanceRecord(
            key=key,
            sop_class_uid=req.affected_sop_class_uid,
            transfer_syntax_uid=req.transfer_syntax_uid,
            relative_path=key.relative_path(),
            size_bytes=written.size_bytes,
            received_at=utcnow(),
            association_id=req.association_id,
            patient_key=_patient_key(attrs),
            accession_number=_text(attrs.get("AccessionNumber")),
            study_date=_text(attrs.get("StudyDate")),
            modality=_text(attrs.get("Modality")),
            series_number=_int(attrs.get("SeriesNumber")),
            instance_number=_int(attrs.get("InstanceNumber")),
            series_description=_text(attrs.get("SeriesDescription"), 64),
            body_part=_text(attrs.get("BodyPartExamined"), 16),
            image_type=_multi(attrs.get("ImageType")),
            slice_thickness_mm=_float(attrs.get("SliceThickness")),
            orientation=orientation_label(attrs.get("ImageOrientationPatient")),
        )
        try:
            conflict = self.index.record_instance(
                rec,
                cache,
                duplicate=stored is not Stored.NEW,
                overwritten=stored is Stored.DUPLICATE_OVERWRITTEN,
            )
        except DBAPIError as exc:
            # The file is durable; a retry finds it and indexes it (keep-first path), and the
            # recovery scan would too. Tell the sender to retry.
            raise IndexUnavailableError("index unavailable, retry later") from exc
        if conflict is not None:
            # refused, so nothing is left that the index does not know (audited by the index)
            if stored is Stored.NEW:
                final.unlink(missing_ok=True)
            raise UIDConflictError(conflict.comment)
        return StoreOutcome(stored, key, written.size_bytes)


_INDEXED_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "IssuerOfPatientID",
    "AccessionNumber",
    "StudyDate",
    "Modality",
    "SeriesNumber",
    "InstanceNumber",
    "SeriesDescription",
    "BodyPartExamined",
    "ImageType",
    "SliceThickness",
    "ImageOrientationPatient",
)


def _check_structure(req: StoreRequest) -> None:
    """Declared lengths and nesting, before anything is written (``storage.structure``). A
    deflated data set is checked by its full decode instead."""
    ts = UID(req.transfer_syntax_uid)
    if req.raw is None or ts.is_deflated:
        return
    try:
        structure.check(req.raw(), implicit=ts.is_implicit_VR, little=ts.is_little_endian)
    except structure.StructureError as exc:
        raise UnparseableError(str(exc)) from None


def _decoded(read: Callable[[], Any], comment: str) -> Any:
    """``read()``, where pydicom may raise anything on a malformed value: every failure is the
    same finding, 0xC000 with ``comment`` (a crash here would be pynetdicom's bare 0xC211)."""
    try:
        return read()
    except Exception as exc:
        raise UnparseableError(comment.format(kind=type(exc).__name__)) from exc


def _decode(req: StoreRequest) -> Dataset:
    return cast(Dataset, _decoded(req.dataset, "data set not decodable: {kind}"))


def _attributes(ds: Dataset) -> dict[str, Any]:
    """Read only the attributes the index needs; a bad value is a named status, not a crash."""
    return {
        keyword: _decoded(partial(ds.get, keyword), f"{keyword} not decodable")
        for keyword in _INDEXED_KEYWORDS
    }


def _check_matches_request(attrs: dict[str, Any], req: StoreRequest) -> None:
    """PITFALLS 10: the data set's own SOP UIDs must exist and equal the request's."""
    for keyword, requested in (
        ("SOPClassUID", req.affected_sop_class_uid),
        ("SOPInstanceUID", req.affected_sop_instance_uid),
    ):
        own = attrs.get(keyword)
        if own is None or str(own) == "":
            raise DoesNotMatchRequestError(f"data set has no {keyword}")
        if str(own) != requested:
            raise DoesNotMatchRequestError(
                f"data set {keyword} differs from request",
            )


def _required_uid(attrs: dict[str, Any], keyword: str) -> str:
    value = attrs.get(keyword)
    if value is None or str(value) == "":
        raise MissingAttributeError(f"missing {keyword}")
    return str(value)


def _patient_key(attrs: dict[str, Any]) -> str | None:
    pid = _text(attrs.get("PatientID"))
    if pid is None:
        return None
    issuer = _text(attrs.get("IssuerOfPatientID")) or ""
    return hashlib.sha256(f"{issuer}\\{pid}".encode()).hexdigest()


def _text(value: Any, max_length: int = 64) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text[:max_length] or None


def _multi(value: Any) -> str | None:
    """A multi-valued CS (Image Type) as stored in the index: values joined by backslash."""
    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value)
    return "\\".join(str(v).strip().upper() for v in values)[:128] or None


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
