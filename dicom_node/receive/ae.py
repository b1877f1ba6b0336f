"""The Application Entity: every storage SOP class with every transfer syntax pydicom knows.

Explicit VR Little Endian is listed first: the SCP's own order decides which syntax is accepted
when a sender proposes several (PITFALLS 4).
"""

from __future__ import annotations

from pydicom.uid import (
    AllTransferSyntaxes,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, StoragePresentationContexts, _config
from pynetdicom.presentation import PresentationContext, build_context

from dicom_node.settings import Settings

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"


def transfer_syntaxes() -> list[str]:
    first = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    return first + [str(ts) for ts in AllTransferSyntaxes if ts not in first]


def storage_contexts() -> list[PresentationContext]:
    syntaxes = transfer_syntaxes()
    return [build_context(str(cx.abstract_syntax), syntaxes) for cx in StoragePresentationContexts]


def build_ae(settings: Settings, *, processes: int) -> AE:
    # pynetdicom's "standard" handlers format every PDU and DIMSE message for DEBUG logging,
    # on the C-STORE path, and can print data set contents (PHI). The node logs its own events.
    _config.LOG_HANDLER_LEVEL = "none"
    node, sec = settings.node, settings.security
    ae = AE(ae_title=node.ae_title)
    ae.supported_contexts = [*storage_contexts(), build_context(VERIFICATION_SOP_CLASS)]
    ae.maximum_pdu_size = node.max_pdu_bytes
    # The limit is node-wide; each SCP process takes its share.
    ae.maximum_associations = max(1, -(-node.max_associations // processes))
    ae.require_called_aet = node.require_called_ae
    ae.require_calling_aet = list(sec.allowed_calling_aes)
    ae.acse_timeout = node.acse_timeout_s
    ae.dimse_timeout = node.dimse_timeout_s
    ae.network_timeout = node.network_timeout_s
    return ae
