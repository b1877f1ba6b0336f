"""Compose one SCP process: storage layout, writer, index, intake, handlers, AE and server."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Engine

from dicom_node.children import die_with_parent
from dicom_node.db.session import make_engine
from dicom_node.receive.ae import build_ae
from dicom_node.receive.handlers import ScpHandlers
from dicom_node.receive.server import Admission, NodeAssociationServer, Unassociated
from dicom_node.receive.tls import server_context
from dicom_node.settings import Settings
from dicom_node.storage.index import Index
from dicom_node.storage.intake import Intake
from dicom_node.storage.paths import StorageLayout
from dicom_node.storage.writer import AtomicWriter


@dataclass(frozen=True, slots=True)
class Scp:
    server: NodeAssociationServer
    handlers: ScpHandlers
    engine: Engine


def build_scp(
    settings: Settings,
    *,
    engine: Engine | None = None,
    admission: Admission | None = None,
    listening: socket.socket | None = None,
) -> Scp:
    """A listening (not yet serving) association server for this process; ``admission``
    shares ``max_associations`` with the node's other SCP processes, and ``listening`` is the
    node's socket they all accept on (``server.listen``; none: bind one here)."""
    engine = engine or make_engine(settings.database.url.get_secret_value())
    layout = StorageLayout(settings.storage.root)
    layout.create()
    writer = AtomicWriter(
        layout.incoming,
        fsync=settings.storage.fsync,
        min_free_bytes=settings.storage.min_free_mb * 1024 * 1024,
    )
    index = Index(engine)
    intake = Intake(
        layout, writer, index, overwrite=settings.storage.duplicate_policy == "overwrite"
    )
    handlers = ScpHandlers(intake, index, writer, settings.security.allowed_hosts)
    ae = build_ae(settings)
    server = cast(
        NodeAssociationServer,
        ae.make_server(
            (settings.node.host, settings.node.port),
            ssl_context=server_context(settings.security),
            evt_handlers=handlers.bindings(),
            server_class=type(
                "ListeningServer", (NodeAssociationServer,), {"inherited": listening}
            ),
        ),
    )
    server.tls_handshake_timeout_s = settings.security.tls_handshake_timeout_s
    node = settings.node
    server.network_timeout_s = node.network_timeout_s
    server.admission = admission or Admission(node.max_associations)
    server.unassociated = Unassociated(
        node.max_unassociated_per_host, node.max_unassociated, node.acse_timeout_s
    )
    ae._servers.append(server)  # as AE.start_server does, so server.shutdown() can unregister
    return Scp(server=server, handlers=handlers, engine=engine)


def serve_scp_process(
    settings: Settings, counts: Any, index: int, listening: socket.socket
) -> None:
    """Entry point of one SCP child process (spawned by ``dicom_node.node``); ``counts`` holds
    each process's admitted associations, this one's at ``index``; ``listening`` is the node's
    socket (multiprocessing hands each child its own descriptor of it)."""
    from dicom_node import logs  # noqa: PLC0415

    die_with_parent()
    logs.configure(settings.logging.level, json_output=settings.logging.json_output)
    scp = build_scp(
        settings,
        admission=Admission(settings.node.max_associations, counts, index),
        listening=listening,
    )
    scp.server.serve_forever(poll_interval=0.5)
