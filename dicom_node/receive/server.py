"""The association server: socket options pynetdicom does not set, and TLS off the accept loop.

- ``SO_REUSEPORT``: several SCP processes listen on one port; the kernel spreads associations
  across them (PITFALLS 2: one pynetdicom process does not scale with threads).
- ``TCP_NODELAY`` on every accepted socket (PITFALLS 1).
- TLS: the accept loop only accepts; each connection's handshake runs in its own thread with a
  timeout, so a client that never starts the handshake blocks nobody (PITFALLS 6).
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.logs import get_logger

log = get_logger(__name__)


class NodeAssociationServer(ThreadedAssociationServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128
    tls_handshake_timeout_s: float = 10.0

    def server_bind(self) -> None:
        assert self.socket is not None  # noqa: S101 - set by TCPServer.__init__
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None  # noqa: S101
        client, address = self.socket.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if self.ssl_context is not None:
            request = self._handshake(request, client_address)
            if request is None:
                return
        super().process_request_thread(request, client_address)

    def _handshake(self, raw: socket.socket, client_address: Any) -> ssl.SSLSocket | None:
        """The TLS handshake, bounded in time; ``None`` (socket closed) if it fails."""
        assert self.ssl_context is not None  # noqa: S101
        raw.settimeout(self.tls_handshake_timeout_s)
        tls = self.ssl_context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        try:
            tls.do_handshake()
        except (OSError, ssl.SSLError) as exc:
            log.warning(
                "tls_handshake_failed",
                peer=str(client_address[0]),
                error=type(exc).__name__,
                reason=str(exc)[:200],
            )
            self.shutdown_request(tls)
            return None
        tls.settimeout(None)
        return tls
