"""TLS for the SCP: a server certificate, and client certificates when a CA is configured."""

from __future__ import annotations

import ssl

from dicom_node.settings import SecuritySettings


def server_context(sec: SecuritySettings) -> ssl.SSLContext | None:
    """The SCP's TLS context (TLS 1.2+), client certificates required with a CA; ``None`` without a
    certificate."""
    if sec.tls_cert is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile=sec.tls_cert, keyfile=sec.tls_key)
    if sec.tls_ca is not None:
        ctx.load_verify_locations(cafile=sec.tls_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
