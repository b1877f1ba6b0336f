"""The Application Entity: every storage SOP class with every transfer syntax pydicom knows.

Explicit VR Little Endian is listed first: the SCP's own order decides which syntax is accepted
when a sender proposes several (PITFALLS 4).
"""

from __future__ import annotations

import threading

from pydicom.uid import (
    AllTransferSyntaxes,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, StoragePresentationContexts, _config
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context

from dicom_node.settings import Settings

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"


def transfer_syntaxes() -> list[str]:
    """Every transfer syntax pydicom knows, Explicit then Implicit VR Little Endian first."""
    first = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    return first + [str(ts) for ts in AllTransferSyntaxes if ts not in first]


def storage_contexts() -> list[PresentationContext]:
    """A presentation context per storage SOP class, each with every transfer syntax."""
    syntaxes = transfer_syntaxes()
    return [build_context(str(cx.abstract_syntax), syntaxes) for cx in StoragePresentationContexts]


class NodeAE(AE):
    """pynetdicom's AE, with the ``max_associations`` check made node-wide.

    pynetdicom rejects an association (local-limit-exceeded) when its process holds more
    acceptor threads than ``maximum_associations``, counting sockets that never associated. Here
    the check, asked from the acceptor's own thread once its A-ASSOCIATE-RQ is complete, takes a
    slot of the node-wide ``Admission`` instead (``dicom_node.receive.server``).
    """

    @property
    def active_associations(self) -> list[Association]:
        """pynetdicom's count, except on an acceptor's first ask: its node-wide slot."""
        current = threading.current_thread()
        admission = getattr(current, "admission", None)
        if admission is None or not isinstance(current, Association) or current.admitted:  # type: ignore[attr-defined]
            return super().active_associations
        if admission.admit():
            current.admitted = True  # type: ignore[attr-defined]
            return [current]
        return [current] * (self.maximum_associations + 1)  # rejected: local-limit-exceeded


def _any_uid(_value: str) -> tuple[bool, str]:
    return True, ""


def build_ae(settings: Settings) -> AE:
    """The node's AE: its contexts, PDU size, AE title checks and timeouts from ``settings``."""
    # pynetdicom's "standard" handlers format every PDU and DIMSE message for DEBUG logging,
    # on the C-STORE path, and can print data set contents (PHI). The node logs its own events.
    _config.LOG_HANDLER_LEVEL = "none"
    # pynetdicom refuses a request UI value over 64 characters while decoding the command set,
    # and the association is aborted with no C-STORE response. The node checks the request's
    # UIDs itself (storage.intake: 0xC001, named) so every C-STORE gets a status.
    _config.VALIDATORS["UI"] = _any_uid
    node, sec = settings.node, settings.security
    ae = NodeAE(ae_title=node.ae_title)
    ae.supported_contexts = [*storage_contexts(), build_context(VERIFICATION_SOP_CLASS)]
    ae.maximum_pdu_size = node.max_pdu_bytes
    # node-wide, through the server's Admission (NodeAE); pynetdicom's own count is not used
    ae.maximum_associations = node.max_associations
    ae.require_called_aet = node.require_called_ae
    ae.require_calling_aet = list(sec.allowed_calling_aes)
    ae.acse_timeout = node.acse_timeout_s
    ae.dimse_timeout = node.dimse_timeout_s
    ae.network_timeout = node.network_timeout_s
    return ae
