"""The association server: socket options pynetdicom does not set, bounds on what a peer can
make the node hold, and TLS off the accept loop.

- One listening socket per node: the node binds the port once, exclusively (a second node, or
  any other program, on the same port is a start-up error: ``listen``), and its SCP processes
  all accept on that one socket, handed to each (PITFALLS 2: one pynetdicom process does not
  scale with threads). The kernel spreads associations across the processes' accept calls.
- ``TCP_NODELAY`` on every accepted socket (PITFALLS 1).
- TLS: the accept loop only accepts; each connection's handshake runs in its own thread with a
  timeout, so a client that never starts the handshake blocks nobody (PITFALLS 6).
- Bounded receive (``BoundedSocket``): a PDU's declared length is checked against the limit
  before any body byte is read: ``MAX_ASSOCIATE_RQ_BYTES`` before association, the maximum PDU
  length the node offered after it. Over the limit, the peer gets an A-ABORT and the socket
  closes. The body is read into a buffer that grows with what arrives, never with what is
  claimed, and each PDU must arrive complete within ``network_timeout_s`` of its first byte.
- Sockets that have not yet sent a complete A-ASSOCIATE-RQ (``Unassociated``) have a deadline
  of ``acse_timeout_s`` from accept and their own cap, per host and in total; over the cap the
  oldest is closed, so idle or half-open sockets cannot take the slots real senders need. They
  do not count against ``max_associations``.
- ``Admission``: ``max_associations`` is node-wide, shared by the SCP processes through one
  counter per process in shared memory, so a burst is admitted in full however the kernel
  spreads it.
- The DUL reactor's idle poll drops from 1 ms to 0.2 ms (PITFALLS 2b; bench/ingest.py).
"""

from __future__ import annotations

import errno
import multiprocessing as mp
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from dicom_node import statuses
from dicom_node.errors import StartupError
from dicom_node.logs import DeliberateCloseError, get_logger
from dicom_node.loops import Loop

log = get_logger(__name__)


DUL_IDLE_POLL_S = 0.0002
MAX_ASSOCIATE_RQ_BYTES = 256 * 1024  # 128 contexts with every syntax, and user identity, fit
UNLIMITED_PDU_CAP = 64 * 1024 * 1024  # max_pdu_bytes = 0 still has a ceiling
GRACE_S = 1.0  # an unassociated socket younger than this is never evicted for a cap
READ_CHUNK = 256 * 1024
# A-ABORT, service-provider initiated, invalid PDU parameter value (PS3.8 §9.3.8)
A_ABORT_INVALID_PARAMETER = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x06])


class PduLimitError(DeliberateCloseError):
    """The peer broke a receive bound; the socket is closed (pynetdicom's Evt17)."""


class Admission:
    """Node-wide association slots: one counter per SCP process, in shared memory."""

    def __init__(self, limit: int, counts: Any = None, index: int = 0) -> None:
        self.limit = limit
        self.counts: Any = counts if counts is not None else mp.get_context("spawn").Array("i", 1)
        self.index = index

    def admit(self) -> bool:
        """Take a slot if the node holds fewer than ``limit``; ``False`` when full."""
        with self.counts.get_lock():
            if sum(self.counts) >= self.limit:
                return False
            self.counts[self.index] += 1
            return True

    def release(self) -> None:
        """Give one of this process's slots back."""
        with self.counts.get_lock():
            self.counts[self.index] = max(0, self.counts[self.index] - 1)

    @property
    def in_use(self) -> int:
        """Slots held node-wide now."""
        with self.counts.get_lock():
            return int(sum(self.counts))


class NodeAssociation(Association):
    """An acceptor that gives its node-wide slot back however it ends, and answers a C-STORE
    that pynetdicom would ignore (an empty Affected SOP Instance UID, say) with a status."""

    admission: Admission | None = None
    admitted: bool = False
    waiting: tuple[Unassociated, BoundedSocket] | None = None

    def _serve_request(self, msg: Any, context_id: int) -> None:
        if isinstance(msg, C_STORE) and msg.MessageID is not None and not msg.is_valid_request:
            missing = [k for k in C_STORE.REQUEST_KEYWORDS if getattr(msg, k) is None]
            uid = {"AffectedSOPClassUID", "AffectedSOPInstanceUID"} & set(missing)
            rsp = C_STORE()
            rsp.MessageIDBeingRespondedTo = msg.MessageID
            rsp.AffectedSOPClassUID = msg.AffectedSOPClassUID
            rsp.AffectedSOPInstanceUID = msg.AffectedSOPInstanceUID
            rsp.Status = (
                statuses.CANNOT_UNDERSTAND_INVALID_UID
                if uid
                else statuses.CANNOT_UNDERSTAND_UNPARSEABLE
            )
            comment = f"C-STORE request without {', '.join(missing)}"[:64]
            rsp.ErrorComment = comment  # type: ignore[assignment]
            log.warning(
                "c_store_failed",
                peer=str(self.requestor.address),
                status=f"0x{rsp.Status:04X}",
                error_comment=rsp.ErrorComment,
            )
            self.dimse.send_msg(rsp, context_id)
            return
        super()._serve_request(msg, context_id)

    def give_back(self) -> None:
        """The slot, once: when the release is answered, else when the thread ends."""
        if self.admitted and self.admission is not None:
            self.admitted = False
            self.admission.release()

    def run(self) -> None:
        """pynetdicom's run, then the slot and the unassociated entry given back."""
        try:
            super().run()
        finally:
            if self.waiting is not None:  # ended before its request was complete
                self.waiting[0].done(self.waiting[1])
            self.give_back()


@dataclass
class _Waiting:
    sock: BoundedSocket
    host: str
    deadline: float


@dataclass
class Unassociated:
    """Sockets accepted but without a complete A-ASSOCIATE-RQ yet: capped and timed out."""

    per_host: int
    total: int
    acse_timeout_s: float
    waiting: dict[int, _Waiting] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, sock: BoundedSocket, host: str) -> None:
        """Track a new socket; over a cap, close the oldest waiting one that has had more than
        ``GRACE_S`` to send its request (a burst of real senders is all young, and stays)."""
        now = time.monotonic()
        evict = []
        with self.lock:
            self.waiting[id(sock)] = _Waiting(sock, host, now + self.acse_timeout_s)
            mine = [w for w in self.waiting.values() if w.host == host]
            over = mine if len(mine) > self.per_host else None
            if over is None and len(self.waiting) > self.total:
                over = list(self.waiting.values())
            if over:
                oldest = min(over, key=lambda w: w.deadline)
                if now - (oldest.deadline - self.acse_timeout_s) > GRACE_S:
                    evict.append(self.waiting.pop(id(oldest.sock)))
        for w in evict:
            log.warning("unassociated_socket_evicted", peer=w.host, reason="cap reached")
            w.sock.hang_up()

    def done(self, sock: BoundedSocket) -> None:
        """Forget ``sock``: its request is complete, or it closed."""
        with self.lock:
            self.waiting.pop(id(sock), None)

    def expire(self) -> None:
        """Close every socket whose association request is past its deadline."""
        now = time.monotonic()
        with self.lock:
            late = [w for w in self.waiting.values() if w.deadline <= now]
            for w in late:
                self.waiting.pop(id(w.sock), None)
        for w in late:
            log.warning("association_request_timed_out", peer=w.host, timeout_s=self.acse_timeout_s)
            w.sock.hang_up()

    def deadline(self, sock: BoundedSocket) -> float | None:
        """When ``sock`` must have sent its request by; ``None`` once it has."""
        with self.lock:
            w = self.waiting.get(id(sock))
            return None if w is None else w.deadline


class BoundedSocket(AssociationSocket):
    """pynetdicom's socket with the receive bounds of this module."""

    unassociated: Unassociated
    network_timeout_s: float
    max_pdu_bytes: int
    _deadline: float = 0.0
    _pending_body: int | None = None

    def _limit(self) -> int:
        if not self._assoc.is_established:
            return MAX_ASSOCIATE_RQ_BYTES
        return self.max_pdu_bytes or UNLIMITED_PDU_CAP

    def recv(self, nr_bytes: int) -> bytearray:
        """A PDU header (its length checked) or body, within the PDU's deadline."""
        if self._pending_body is None:  # a PDU header: its clock starts now
            before_rq = self.unassociated.deadline(self)
            self._deadline = time.monotonic() + self.network_timeout_s
            if before_rq is not None:
                self._deadline = min(self._deadline, before_rq)
            header = self._read(nr_bytes)
            if len(header) == 6 and 0x01 <= header[0] <= 0x07:
                _, _, length = struct.unpack(">BBL", header)
                if length > self._limit():
                    self._refuse(
                        f"PDU length {length} over the limit of {self._limit()}", header[0]
                    )
                self._pending_body = length
            return header
        self._pending_body = None
        body = self._read(nr_bytes)
        if not self._assoc.is_established and len(body) == nr_bytes:
            self.unassociated.done(self)  # a complete request: admission decides from here
        return body

    def _read(self, nr_bytes: int) -> bytearray:
        """Up to ``nr_bytes``, in a buffer that grows with what arrives; short if the peer
        closed; ``TimeoutError`` past the PDU's deadline."""
        assert self.socket is not None  # noqa: S101 - set while the association runs
        buf = bytearray()
        chunk = bytearray(min(nr_bytes, READ_CHUNK))
        view = memoryview(chunk)
        blocking = self.socket.gettimeout()
        try:
            return self._fill(buf, view, nr_bytes)
        finally:
            if self.socket is not None:
                self.socket.settimeout(blocking)

    def _fill(self, buf: bytearray, view: memoryview, nr_bytes: int) -> bytearray:
        assert self.socket is not None  # noqa: S101
        while len(buf) < nr_bytes:
            left = self._deadline - time.monotonic()
            if left <= 0:
                log.warning(
                    "pdu_timed_out",
                    peer=self._peer(),
                    received=len(buf),
                    expected=nr_bytes,
                    timeout_s=self.network_timeout_s,
                )
                raise TimeoutError("PDU not complete before its deadline")
            self.socket.settimeout(left)
            try:
                n = self.socket.recv_into(view, min(len(view), nr_bytes - len(buf)))
            except TimeoutError:
                continue  # the loop's deadline check says so
            if not n:
                return buf
            buf += view[:n]
        return buf

    def _refuse(self, reason: str, pdu_type: int) -> None:
        log.warning("pdu_refused", peer=self._peer(), reason=reason, pdu_type=f"0x{pdu_type:02X}")
        try:
            assert self.socket is not None  # noqa: S101
            self.socket.settimeout(2.0)
            self.socket.sendall(A_ABORT_INVALID_PARAMETER)
        except OSError:
            pass
        raise PduLimitError(reason)

    def _peer(self) -> str:
        return str(self._assoc.requestor.address)

    def hang_up(self) -> None:
        """Close from another thread: the reactor then sees the connection closed (Evt17)."""
        try:
            if self.socket is not None:
                self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class NodeRequestHandler(RequestHandler):
    server: NodeAssociationServer

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        assoc.dul._run_loop_delay = DUL_IDLE_POLL_S
        assoc.__class__ = NodeAssociation
        node_assoc: NodeAssociation = assoc  # type: ignore[assignment]
        node_assoc.admission = self.server.admission
        answer_release = assoc.acse.send_release

        def send_release(is_response: bool = False) -> None:
            if is_response:  # free the slot before the peer hears the release is done
                node_assoc.give_back()
            answer_release(is_response)

        assoc.acse.send_release = send_release  # type: ignore[method-assign]
        sock = assoc.dul.socket
        if type(sock) is AssociationSocket:
            sock.__class__ = BoundedSocket
            bounded: BoundedSocket = sock  # type: ignore[assignment]
            bounded.unassociated = self.server.unassociated
            bounded.network_timeout_s = self.server.network_timeout_s
            bounded.max_pdu_bytes = self.ae.maximum_pdu_size
            self.server.unassociated.add(bounded, str(self.client_address[0]))
            assoc.waiting = (self.server.unassociated, bounded)  # type: ignore[attr-defined]
        return assoc


def listen(host: str, port: int, backlog: int = 128) -> socket.socket:
    """The node's one listening socket for ``host:port``, bound without ``SO_REUSEPORT``: if
    anything else listens there (another node, Orthanc, storescp), the node does not start."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host, port), family=family, backlog=backlog)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {port} is in use by another process (the DICOM port, [node] port on "
                f"{host}): stop it, or give this node another port"
            ) from None
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


class NodeAssociationServer(ThreadedAssociationServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128
    tls_handshake_timeout_s: float = 10.0
    network_timeout_s: float = 120.0
    admission: Admission
    unassociated: Unassociated

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("request_handler", NodeRequestHandler)
        super().__init__(*args, **kwargs)
        self.admission = Admission(self.ae.maximum_associations)
        self.unassociated = Unassociated(8, 64, self.ae.acse_timeout or 30.0)
        self._watch = Loop(
            "unassociated-watch",
            self._expire_unassociated,
            0.25,
            event="unassociated_watch_failed",
            wait_first=True,
        )
        self._watch.start()

    def _expire_unassociated(self) -> None:
        self.unassociated.expire()  # looked up each time: the SCP sets its own after __init__

    def server_close(self) -> None:
        """Stop the unassociated watch, then close the socket."""
        self._watch.stop()
        super().server_close()

    inherited: socket.socket | None = None  # the node's listening socket (``listen``)

    def server_bind(self) -> None:
        """Take the node's listening socket when given one, else bind (exclusively) here."""
        if self.inherited is None:
            super().server_bind()
            return
        assert self.socket is not None  # noqa: S101 - set by TCPServer.__init__
        self.socket.close()
        self.socket = self.inherited
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """Listen, unless the node's socket already does."""
        if self.inherited is None:
            super().server_activate()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept, with ``TCP_NODELAY`` on the new socket."""
        assert self.socket is not None  # noqa: S101
        client, address = self.socket.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Serve one connection; TLS handshake first, in this thread."""
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
