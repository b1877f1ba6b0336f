"""TLS with dcmtk storescu +tls: server certificate, optional client certificates, idle clients."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import NODE_AE, RunningNode, node_settings, start_node
from tests.peers import dcmtk


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.pem"),
    )
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            str(d / f"{name}.key"),
            "-out",
            str(d / f"{name}.csr"),
        )
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl(
            "x509",
            "-req",
            "-in",
            str(d / f"{name}.csr"),
            "-CA",
            str(d / "ca.pem"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(d / f"{name}.ext"),
            "-out",
            str(d / f"{name}.pem"),
        )
    return d


def tls_node(tmp_path: Path, pki: Path, *, require_client_cert: bool) -> RunningNode:
    security = {
        "tls_cert": str(pki / "server.pem"),
        "tls_key": str(pki / "server.key"),
        "tls_handshake_timeout_s": 3.0,
    }
    if require_client_cert:
        security["tls_ca"] = str(pki / "ca.pem")
    return start_node(node_settings(tmp_path, security=security))


@pytest.fixture
def tls_node_any_client(tmp_path: Path, pki: Path) -> Iterator[RunningNode]:
    node = tls_node(tmp_path, pki, require_client_cert=False)
    yield node
    node.stop()


@pytest.fixture
def tls_node_client_cert(tmp_path: Path, pki: Path) -> Iterator[RunningNode]:
    node = tls_node(tmp_path, pki, require_client_cert=True)
    yield node
    node.stop()


def storescu_tls(
    port: int, pki: Path, files: list[Path], *, client_cert: bool
) -> subprocess.CompletedProcess[str]:
    tls = ["+tls", str(pki / "client.key"), str(pki / "client.pem")] if client_cert else ["+tla"]
    return dcmtk(
        "storescu",
        "-v",
        *tls,
        "+cf",
        pki / "ca.pem",
        "-aec",
        NODE_AE,
        "127.0.0.1",
        port,
        *files,
        timeout=60,
    )


def test_tls_without_client_certificate(
    tls_node_any_client: RunningNode, ct_slice: Path, pki: Path
) -> None:
    done = storescu_tls(tls_node_any_client.port, pki, [ct_slice], client_cert=False)
    assert done.returncode == 0, done.stderr
    assert "Received Store Response (Success)" in done.stderr
    assert tls_node_any_client.studies()[0]["instances"] == 1


def test_tls_with_required_client_certificate(
    tls_node_client_cert: RunningNode, ct_slice: Path, pki: Path
) -> None:
    done = storescu_tls(tls_node_client_cert.port, pki, [ct_slice], client_cert=True)
    assert done.returncode == 0, done.stderr
    assert "Received Store Response (Success)" in done.stderr


def test_tls_client_without_certificate_refused(
    tls_node_client_cert: RunningNode, ct_slice: Path, pki: Path
) -> None:
    done = storescu_tls(tls_node_client_cert.port, pki, [ct_slice], client_cert=False)
    assert done.returncode != 0
    assert "Store Response" not in done.stderr
    assert tls_node_client_cert.studies() == []


def test_plain_tcp_client_cannot_store_on_tls_port(
    tls_node_any_client: RunningNode, ct_slice: Path
) -> None:
    done = dcmtk(
        "storescu", "-aec", NODE_AE, "127.0.0.1", tls_node_any_client.port, ct_slice, timeout=60
    )
    assert done.returncode != 0
    assert tls_node_any_client.studies() == []


def test_idle_client_never_handshaking_blocks_nobody(
    tls_node_any_client: RunningNode, ct_slice: Path, pki: Path
) -> None:
    """PITFALLS 6: a TCP client that never sends a ClientHello must not freeze the accept loop."""
    idle = [socket.create_connection(("127.0.0.1", tls_node_any_client.port)) for _ in range(3)]
    try:
        done = storescu_tls(tls_node_any_client.port, pki, [ct_slice], client_cert=False)
        assert done.returncode == 0, done.stderr
        assert "Received Store Response (Success)" in done.stderr
        # ...and the idle ones are cut off after the handshake timeout, not kept forever.
        idle[0].settimeout(10)
        assert idle[0].recv(1) == b""
    finally:
        for s in idle:
            s.close()
