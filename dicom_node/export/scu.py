"""C-STORE SCU for results: one association per (job, destination), every status checked.

Outcomes are classified for the outbox:

- Success (0x0000) and the warnings (0xB000 coercion, 0xB006 elements discarded, 0xB007 data set
  does not match the SOP Class) count as delivered; the warning is recorded on the row.
- Out of resources (0xA7xx), resource limitation (0x0213), duplicate invocation (0x0210: the
  peer saw the Message ID twice; a new association starts afresh), no response, an abort, a
  refused or timed-out connection: *transient*, retried with backoff. A failed association also
  counts against the destination's circuit.
- Refused (0x0122 SOP Class not supported, 0x0124 not authorised, 0xA9xx data set does not match,
  0xCxxx cannot understand, or the SOP Class / transfer syntax not accepted at association):
  *permanent*. The same bytes will get the same answer, so the row FAILS at once with the reason;
  an admin fixes the PACS (or the profile) and resends.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association

from dicom_node import statuses
from dicom_node.receive.ae import VERIFICATION_SOP_CLASS
from dicom_node.settings import DestinationSettings

# Failures that another try, later or on a new association, may get past.
TRANSIENT_FAILURES = (statuses.RESOURCE_LIMITATION, statuses.DUPLICATE_INVOCATION)


@dataclass(frozen=True, slots=True)
class Outcome:
    delivered: bool
    transient: bool  # worth retrying (ignored when delivered)
    status: int | None
    message: str
    warning: str | None = None
    sent: bool = True  # put on the wire; an object never sent does not use an attempt


LOST = Outcome(False, True, None, "association lost before sending", sent=False)


class AssociationFailedError(Exception):
    """No association: refused, rejected, aborted or timed out. Counts against the circuit."""


class NotAcceptedError(Exception):
    """The destination answered, but rejected every presentation context offered: the same
    objects will never pass. Does not count against the circuit."""


def _tls(dest: DestinationSettings) -> tuple[ssl.SSLContext, str] | None:
    if not dest.tls:
        return None
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(dest.tls_ca) if dest.tls_ca else None
    )
    if dest.tls_cert is not None:
        context.load_cert_chain(str(dest.tls_cert), str(dest.tls_key) if dest.tls_key else None)
    return context, dest.host


def associate(
    dest: DestinationSettings, calling_ae: str, sop_classes: Sequence[str]
) -> Association:
    """An established association with the destination, TCP_NODELAY set (PITFALLS 1)."""
    ae = AE(ae_title=calling_ae)
    for sop_class in dict.fromkeys(sop_classes):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.acse_timeout = dest.acse_timeout_s
    ae.dimse_timeout = dest.dimse_timeout_s
    ae.network_timeout = dest.dimse_timeout_s
    ae.connection_timeout = dest.acse_timeout_s
    where = f"{dest.ae_title}@{dest.host}:{dest.port}"
    try:
        assoc = ae.associate(
            dest.host, dest.port, ae_title=dest.ae_title, tls_args=_tls(dest), max_pdu=0
        )
    except (OSError, ssl.SSLError) as exc:
        raise AssociationFailedError(f"cannot connect to {where}: {exc}") from None
    if not assoc.is_established:
        if assoc.rejected_contexts and not assoc.accepted_contexts:
            refused = ", ".join(
                sorted({UID(str(cx.abstract_syntax)).name for cx in assoc.rejected_contexts})
            )
            raise NotAcceptedError(f"{where} rejects every SOP class offered: {refused}")
        if assoc.is_rejected and assoc.acceptor.primitive is not None:
            p = assoc.acceptor.primitive
            reason = f"rejected: {p.result_str}, {p.source_str}, {p.reason_str}"
        else:
            reason = "aborted or no answer (refused connection, TLS mismatch or timeout)"
        raise AssociationFailedError(f"association with {where} {reason}")
    sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return assoc


def classify(status: int | None, comment: str = "") -> Outcome:
    """What a C-STORE status means for the outbox: delivered, worth retrying, or refused."""
    if status is None:
        return Outcome(False, True, None, "no C-STORE response (timeout or abort)")
    if status == statuses.SUCCESS:
        return Outcome(True, False, status, "Success")
    text = f"0x{status:04X}" + (f" {comment}" if comment else "")
    named = statuses.meaning(status)
    if statuses.is_warning(status):
        return Outcome(True, False, status, "Warning", f"{text} ({named})")
    if statuses.is_out_of_resources(status) or status in TRANSIENT_FAILURES:
        return Outcome(False, True, status, f"refused for now: {text} ({named})")
    return Outcome(False, False, status, f"refused: {text} ({named})")


def store(
    dest: DestinationSettings, calling_ae: str, files: Sequence[tuple[Path, str]]
) -> list[Outcome]:
    """C-STORE each ``(path, sop_class_uid)`` on one association, in order; one outcome each.
    Raises ``AssociationFailedError`` when no association could be made."""
    try:
        assoc = associate(dest, calling_ae, [sop_class for _, sop_class in files])
    except NotAcceptedError as exc:
        return [Outcome(False, False, None, f"not accepted by the PACS: {exc}") for _ in files]
    outcomes: list[Outcome] = []
    try:
        for path, _ in files:
            if not assoc.is_established:
                outcomes.append(LOST)
                continue
            ds = dcmread(path)
            try:
                rsp = assoc.send_c_store(ds)
            except ValueError as exc:  # no accepted presentation context (PITFALLS 22)
                outcomes.append(Outcome(False, False, None, f"not accepted by the PACS: {exc}"))
                continue
            except RuntimeError:  # pynetdicom: the association ended before this request left
                outcomes.append(LOST)
                continue
            except OSError as exc:
                outcomes.append(Outcome(False, True, None, f"sending failed: {exc}"))
                continue
            status = int(rsp.Status) if rsp is not None and "Status" in rsp else None
            comment = str(rsp.get("ErrorComment", "")) if rsp is not None else ""
            outcomes.append(classify(status, comment))
    finally:
        if assoc.is_established:
            assoc.release()
    return outcomes


def echo(dest: DestinationSettings, calling_ae: str, *, probe: bool = False) -> str:
    """C-ECHO the destination; the reason it failed, or '' on success. As the circuit's
    ``probe``, a destination that answers but takes no C-ECHO counts as up."""
    try:
        assoc = associate(dest, calling_ae, [VERIFICATION_SOP_CLASS])
    except NotAcceptedError as exc:
        return "" if probe else str(exc)
    except AssociationFailedError as exc:
        return str(exc)
    try:
        rsp = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    if rsp is not None and "Status" in rsp and int(rsp.Status) == statuses.SUCCESS:
        return ""
    return "C-ECHO failed: " + (
        f"0x{int(rsp.Status):04X}" if rsp and "Status" in rsp else "no response"
    )
