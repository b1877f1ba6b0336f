"""Thin pynetdicom event handlers. The C-STORE handler is the one place that decides a status.

Notifications (association start/end) can never break an association: their failures are logged.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import time
import uuid
from dataclasses import dataclass, field
from io import BytesIO
from typing import cast

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.pdu_primitives import A_ASSOCIATE
from sqlalchemy.exc import SQLAlchemyError

from dicom_node import statuses
from dicom_node.domain import AssociationEnd, is_valid_uid
from dicom_node.logs import get_logger
from dicom_node.storage import errors
from dicom_node.storage.index import AssociationCache, Index
from dicom_node.storage.intake import Intake, Stored, StoreRequest
from dicom_node.storage.writer import AtomicWriter

log = get_logger(__name__)

LAST_INDEXED_TAG: BaseTag = Tag(0x0020, 0x0037)  # Image Orientation (Patient)
SLOW_C_STORE_S = 5.0  # senders commonly time a response out at 30 s

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 §9.3.4
REJECT_HOST_NOT_ALLOWED = (0x01, 0x01, 0x01)  # permanent, service-user, no reason given
REJECT_DISK_RESERVE = (0x02, 0x03, 0x01)  # transient, service-provider, temporary congestion

STATUS_FOR: dict[type[errors.StorageRefusedError], int] = {
    errors.InvalidUIDError: statuses.CANNOT_UNDERSTAND_INVALID_UID,
    errors.UnparseableError: statuses.CANNOT_UNDERSTAND_UNPARSEABLE,
    errors.MissingAttributeError: statuses.CANNOT_UNDERSTAND_MISSING_ATTRIBUTE,
    errors.DoesNotMatchRequestError: statuses.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    errors.UIDConflictError: statuses.CANNOT_UNDERSTAND_UID_CONFLICT,
    errors.DiskReserveError: statuses.OUT_OF_RESOURCES_DISK_RESERVE,
    errors.WriteFailedError: statuses.OUT_OF_RESOURCES_WRITE_FAILED,
    errors.IndexUnavailableError: statuses.OUT_OF_RESOURCES_INDEX_BUSY,
}
"""The one place a storage refusal becomes a C-STORE status."""


def status_for(exc: errors.StorageRefusedError) -> int:
    """The C-STORE status of a storage refusal (``STATUS_FOR``)."""
    return STATUS_FOR[type(exc)]


@dataclass(slots=True)
class AssociationState:
    id: str
    calling_ae: str
    cache: AssociationCache = field(default_factory=AssociationCache)
    stored: int = 0
    failed: int = 0


class ScpHandlers:
    """Binds the node's stages to pynetdicom's events for one SCP process."""

    def __init__(
        self,
        intake: Intake,
        index: Index,
        writer: AtomicWriter,
        allowed_hosts: tuple[str, ...],
    ) -> None:
        self.intake = intake
        self.index = index
        self.writer = writer
        self.allowed = [ipaddress.ip_network(h, strict=False) for h in allowed_hosts]
        self._assocs: dict[int, AssociationState] = {}

    def bindings(self) -> list[EventHandlerType]:
        """The (event, handler) pairs the AE's server is made with."""
        return [
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_C_STORE, self.on_c_store),
            (evt.EVT_RELEASED, self.on_released),
            (evt.EVT_ABORTED, self.on_aborted),
            (evt.EVT_CONN_CLOSE, self.on_conn_close),
        ]

    # -- association control ---------------------------------------------------------------
    def on_requested(self, event: Event) -> None:
        """Reject a host off the allow-list, or any peer while the disk reserve is reached."""
        assoc = event.assoc
        peer = assoc.requestor.address
        calling = _requested(assoc).calling_ae_title  # PITFALLS 7
        if self.allowed and not any(ipaddress.ip_address(peer) in n for n in self.allowed):
            log.warning(
                "association_rejected", reason="host not allowed", peer=peer, calling_ae=calling
            )
            self._reject(assoc, REJECT_HOST_NOT_ALLOWED)
        elif not self.writer.has_reserve():
            log.error(
                "association_rejected", reason="disk reserve reached", peer=peer, calling_ae=calling
            )
            self._reject(assoc, REJECT_DISK_RESERVE)

    @staticmethod
    def _reject(assoc: Association, rsd: tuple[int, int, int]) -> None:
        assoc.acse.send_reject(*rsd)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    def on_rejected(self, event: Event) -> None:
        """Log a rejected association (who asked, for which AE title)."""
        assoc = event.assoc
        log.info(
            "association_rejected",
            peer=assoc.requestor.address,
            calling_ae=_requested(assoc).calling_ae_title,
            called_ae=_requested(assoc).called_ae_title,
        )

    def on_accepted(self, event: Event) -> None:
        """Index the association, so studies can tell which are still open."""
        assoc = event.assoc
        state = AssociationState(id=str(uuid.uuid4()), calling_ae=assoc.requestor.ae_title)
        self._assocs[id(assoc)] = state
        try:
            self.index.association_started(
                state.id,
                calling_ae=state.calling_ae,
                called_ae=assoc.acceptor.ae_title,
                peer_host=assoc.requestor.address,
                peer_port=assoc.requestor.port,
                tls=assoc.dul.socket is not None
                and isinstance(assoc.dul.socket.socket, ssl.SSLSocket),
                pid=os.getpid(),
            )
        except SQLAlchemyError:
            log.exception("association_index_failed", association_id=state.id)
        log.info(
            "association_accepted",
            association_id=state.id,
            calling_ae=state.calling_ae,
            peer=assoc.requestor.address,
        )

    def _ended(self, event: Event, reason: AssociationEnd) -> None:
        state = self._assocs.pop(id(event.assoc), None)
        if state is None:
            return  # rejected, or already recorded
        try:
            self.index.association_ended(state.id, reason)
        except SQLAlchemyError:
            log.exception("association_index_failed", association_id=state.id)
        log.info(
            "association_ended",
            association_id=state.id,
            calling_ae=state.calling_ae,
            how=str(reason),
            stored=state.stored,
            failed=state.failed,
        )

    def on_released(self, event: Event) -> None:
        """The association ended with an A-RELEASE."""
        self._ended(event, AssociationEnd.RELEASED)

    def on_aborted(self, event: Event) -> None:
        """The association ended with an A-ABORT."""
        self._ended(event, AssociationEnd.ABORTED)

    def on_conn_close(self, event: Event) -> None:
        """The connection closed (after a release or an abort, or without either)."""
        self._ended(event, AssociationEnd.CLOSED)

    # -- C-STORE ---------------------------------------------------------------------------
    def on_c_store(self, event: Event) -> Dataset | int:
        """Store the instance through the intake; the status says how it went."""
        state = self._assocs.get(id(event.assoc))
        rq = cast(C_STORE, event.request)
        req = StoreRequest(
            affected_sop_class_uid=str(rq.AffectedSOPClassUID or ""),
            affected_sop_instance_uid=str(rq.AffectedSOPInstanceUID or ""),
            transfer_syntax_uid=str(event.context.transfer_syntax),
            dataset=lambda: index_header(event),
            encoded=event.encoded_dataset,
            association_id=state.id if state else None,
            raw=lambda: cast(BytesIO, rq.DataSet).getbuffer(),
        )
        started = time.monotonic()
        try:
            outcome = self.intake.accept(req, state.cache if state else AssociationCache())
        except errors.StorageRefusedError as exc:
            _warn_if_slow(started, req)
            if state:
                state.failed += 1
            status = status_for(exc)
            log.warning(
                "c_store_failed",
                association_id=req.association_id,
                sop_instance_uid=_loggable_uid(req.affected_sop_instance_uid),
                status=f"0x{status:04X}",
                status_name=statuses.NAMES[status],
                error_comment=exc.comment,
            )
            return _status(status, exc.comment)
        _warn_if_slow(started, req)
        if state:
            state.stored += 1
        if outcome.stored is not Stored.NEW:
            log.info(
                "c_store_duplicate",
                association_id=req.association_id,
                sop_instance_uid=outcome.key.sop_instance_uid,
                how=outcome.stored.value,
                study_uid=outcome.key.study_uid,
            )
        return statuses.SUCCESS


def _warn_if_slow(started: float, req: StoreRequest) -> None:
    """A C-STORE that took long enough for a sender's DIMSE timeout to be near: the admin sees
    where (a locked index, a slow disk) before modalities start to abort."""
    took = time.monotonic() - started
    if took >= SLOW_C_STORE_S:
        log.warning(
            "c_store_slow",
            association_id=req.association_id,
            sop_instance_uid=_loggable_uid(req.affected_sop_instance_uid),
            seconds=round(took, 2),
        )


def index_header(event: Event) -> Dataset:
    """The data set up to Image Orientation (0020,0037): all the index needs, without touching the
    pixel data. Deflated data sets go through pynetdicom's full decode."""
    ts = event.context.transfer_syntax
    if ts.is_deflated:
        return event.dataset
    raw = cast(BytesIO, cast(C_STORE, event.request).DataSet).getbuffer()
    return read_dataset(
        BytesIO(raw),
        ts.is_implicit_VR,
        ts.is_little_endian,
        stop_when=lambda tag, _vr, _length: tag > LAST_INDEXED_TAG,
    )


def _requested(assoc: Association) -> A_ASSOCIATE:
    primitive = assoc.requestor.primitive
    assert primitive is not None  # noqa: S101 - set by pynetdicom before EVT_REQUESTED
    return primitive


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]  # LO
    return ds


def _loggable_uid(value: str) -> str:
    """Request UIDs may be garbage (or an attack): log them only if they are UIDs."""
    return value if is_valid_uid(value) else f"<invalid, {len(value)} chars>"
