"""C-ECHO SCU: ``dicom-node echo`` (and, later, the destinations' test button)."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from pynetdicom import AE

from dicom_node.receive.ae import VERIFICATION_SOP_CLASS


@dataclass(frozen=True, slots=True)
class EchoResult:
    ok: bool
    message: str


def c_echo(
    host: str, port: int, called_ae: str, *, calling_ae: str, timeout_s: float = 10
) -> EchoResult:
    """C-ECHO ``called_ae`` at ``host:port``; the result says why when it fails."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    try:
        assoc = ae.associate(host, port, ae_title=called_ae)
    except (OSError, socket.gaierror) as exc:
        return EchoResult(False, f"cannot connect to {host}:{port}: {exc}")
    if not assoc.is_established:
        if assoc.is_rejected and assoc.acceptor.primitive is not None:
            p = assoc.acceptor.primitive
            return EchoResult(
                False, f"association rejected: {p.result_str}, {p.source_str}, {p.reason_str}"
            )
        return EchoResult(
            False, f"association with {called_ae}@{host}:{port} failed (aborted or no answer)"
        )
    status = assoc.send_c_echo()
    assoc.release()
    if status and status.Status == 0:
        return EchoResult(True, f"C-ECHO {called_ae}@{host}:{port}: Success")
    code = f"0x{status.Status:04X}" if status else "no response"
    return EchoResult(False, f"C-ECHO {called_ae}@{host}:{port} failed: {code}")
