"""The association server's bounds, part by part: node-wide admission slots, the cap and
deadline on sockets that have not associated, and the bounded PDU reader on a real socket pair.
The same bounds against hostile peers over TCP are in tests/integration/test_hostile_peers.py."""

from __future__ import annotations

import multiprocessing as mp
import queue
import socket
import struct
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom import StoragePresentationContexts

from dicom_node.receive import server
from dicom_node.receive.ae import VERIFICATION_SOP_CLASS, build_ae, transfer_syntaxes
from dicom_node.receive.server import (
    MAX_ASSOCIATE_RQ_BYTES,
    Admission,
    BoundedSocket,
    PduLimitError,
    Unassociated,
)
from dicom_node.settings import Settings


def test_admission_is_shared_by_every_process_counter() -> None:
    counts = mp.get_context("spawn").Array("i", 3)
    first, second = Admission(3, counts, 0), Admission(3, counts, 2)
    assert [first.admit(), second.admit(), second.admit()] == [True, True, True]
    assert not first.admit()  # 3 slots node-wide, whichever process holds them
    assert first.in_use == second.in_use == 3
    second.release()
    assert first.admit()
    first.release()
    first.release()
    first.release()  # never below zero: a double release cannot free someone else's slot
    assert list(counts) == [0, 0, 1]


class FakeSocket:
    def __init__(self) -> None:
        self.hung_up = False

    def hang_up(self) -> None:
        self.hung_up = True


def waiting(cap: Unassociated, host: str, age_s: float) -> FakeSocket:
    sock = FakeSocket()
    cap.add(sock, host)  # type: ignore[arg-type]
    cap.waiting[id(sock)].deadline -= age_s
    return sock


def test_unassociated_cap_per_host_closes_the_oldest_past_its_grace() -> None:
    cap = Unassociated(per_host=2, total=10, acse_timeout_s=30)
    old = waiting(cap, "10.0.0.1", age_s=5)
    young = waiting(cap, "10.0.0.1", age_s=0.1)
    other = waiting(cap, "10.0.0.2", age_s=9)
    newest = waiting(cap, "10.0.0.1", age_s=0)
    assert old.hung_up and not young.hung_up and not newest.hung_up
    assert not other.hung_up  # another host's socket is not this host's cap
    assert id(old) not in cap.waiting and len(cap.waiting) == 3


def test_a_burst_of_young_sockets_is_never_evicted() -> None:
    cap = Unassociated(per_host=2, total=3, acse_timeout_s=30)
    burst = [waiting(cap, f"10.0.0.{i}", age_s=0) for i in range(6)]
    assert not any(s.hung_up for s in burst)


def test_unassociated_total_cap_and_deadline() -> None:
    cap = Unassociated(per_host=5, total=2, acse_timeout_s=30)
    oldest = waiting(cap, "10.0.0.1", age_s=20)
    kept = waiting(cap, "10.0.0.2", age_s=10)
    waiting(cap, "10.0.0.3", age_s=0)
    assert oldest.hung_up and not kept.hung_up
    cap.waiting[id(kept)].deadline = time.monotonic() - 0.01
    assert cap.deadline(kept) is not None  # type: ignore[arg-type]
    cap.expire()
    assert kept.hung_up and cap.deadline(kept) is None  # type: ignore[arg-type]
    assert len(cap.waiting) == 1
    cap.done(next(iter(cap.waiting.values())).sock)
    assert cap.waiting == {}


@pytest.fixture
def pair() -> Iterator[tuple[BoundedSocket, socket.socket, Unassociated]]:
    ours, peer = socket.socketpair()
    assoc = SimpleNamespace(
        is_established=False,
        requestor=SimpleNamespace(address="127.0.0.1"),
        dul=SimpleNamespace(event_queue=queue.Queue()),
    )
    bounded = BoundedSocket(assoc, client_socket=ours)  # type: ignore[arg-type]
    bounded.unassociated = Unassociated(8, 64, acse_timeout_s=30)
    bounded.network_timeout_s = 0.5
    bounded.max_pdu_bytes = 16_384
    bounded.unassociated.add(bounded, "127.0.0.1")
    yield bounded, peer, bounded.unassociated
    ours.close()
    peer.close()


def header(pdu_type: int, length: int) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, length)


def test_a_complete_request_leaves_the_unassociated_list(pair: Any) -> None:
    bounded, peer, cap = pair
    peer.sendall(header(0x01, 10) + b"x" * 10)
    assert bytes(bounded.recv(6)) == header(0x01, 10)
    assert bounded._pending_body == 10 and cap.waiting  # the body is still to come
    assert bytes(bounded.recv(10)) == b"x" * 10
    assert cap.waiting == {}


def test_an_associate_request_over_its_limit_is_aborted_before_its_body(pair: Any) -> None:
    bounded, peer, _cap = pair
    peer.sendall(header(0x01, MAX_ASSOCIATE_RQ_BYTES + 1))
    with pytest.raises(PduLimitError, match=f"over the limit of {MAX_ASSOCIATE_RQ_BYTES}"):
        bounded.recv(6)
    assert peer.recv(10) == server.A_ABORT_INVALID_PARAMETER


def test_after_association_the_limit_is_the_offered_pdu_size(pair: Any) -> None:
    bounded, peer, _cap = pair
    bounded._assoc.is_established = True
    peer.sendall(header(0x04, 16_384) + b"y" * 16_384)
    bounded.recv(6)
    assert len(bounded.recv(16_384)) == 16_384
    peer.sendall(header(0x04, 16_385))
    with pytest.raises(PduLimitError, match="PDU length 16385 over the limit of 16384"):
        bounded.recv(6)
    bounded.max_pdu_bytes = 0  # "unlimited" still has a ceiling
    peer.sendall(header(0x04, server.UNLIMITED_PDU_CAP + 1))
    with pytest.raises(PduLimitError):
        bounded.recv(6)


def test_a_pdu_that_stops_arriving_times_out_at_its_deadline(pair: Any) -> None:
    bounded, peer, _cap = pair
    peer.sendall(header(0x01, 100) + b"z" * 40)
    bounded.recv(6)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="PDU not complete before its deadline"):
        bounded.recv(100)
    assert 0.3 < time.monotonic() - started < 5


def test_a_trickle_cannot_extend_the_deadline(pair: Any) -> None:
    bounded, peer, _cap = pair
    stop = threading.Event()

    def trickle() -> None:
        peer.sendall(header(0x01, 1000))
        while not stop.wait(0.05):  # one byte every 50 ms, for longer than the 0.5 s deadline
            peer.sendall(b"t")

    sender = threading.Thread(target=trickle)
    sender.start()
    bounded.recv(6)
    try:
        with pytest.raises(TimeoutError):
            bounded.recv(1000)
    finally:
        stop.set()
        sender.join()


def test_a_peer_that_closes_gives_a_short_read(pair: Any) -> None:
    bounded, peer, _cap = pair
    peer.sendall(header(0x01, 50) + b"q" * 20)
    peer.shutdown(socket.SHUT_WR)
    bounded.recv(6)
    assert bytes(bounded.recv(50)) == b"q" * 20


def test_transfer_syntaxes_put_explicit_little_endian_first() -> None:
    syntaxes = transfer_syntaxes()
    assert syntaxes[:2] == [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    assert JPEG2000Lossless in syntaxes
    assert len(syntaxes) == len(set(syntaxes))


def test_build_ae_takes_its_bounds_from_the_settings() -> None:
    settings = Settings(
        node={  # type: ignore[arg-type]
            "ae_title": "NODE_T",
            "max_pdu_bytes": 65536,
            "max_associations": 7,
            "acse_timeout_s": 11,
            "dimse_timeout_s": 12,
            "network_timeout_s": 13,
        },
        security={"allowed_calling_aes": ["CT1", "MR2"]},  # type: ignore[arg-type]
    )
    ae = build_ae(settings)
    assert ae.ae_title == "NODE_T"
    assert (ae.maximum_pdu_size, ae.maximum_associations) == (65536, 7)
    assert (ae.acse_timeout, ae.dimse_timeout, ae.network_timeout) == (11, 12, 13)
    assert ae.require_calling_aet == ["CT1", "MR2"]
    abstract = [cx.abstract_syntax for cx in ae.supported_contexts]
    assert len(abstract) == len(StoragePresentationContexts) + 1
    assert VERIFICATION_SOP_CLASS in abstract
    ct = next(
        cx for cx in ae.supported_contexts if cx.abstract_syntax == "1.2.840.10008.5.1.4.1.1.2"
    )
    assert ct.transfer_syntax[:2] == [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
