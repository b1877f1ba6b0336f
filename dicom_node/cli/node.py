"""Running the node: ``serve``, ``worker`` (Celery) and ``echo``; the root adds them. The
wiring itself is ``dicom_node.node``, the composition root."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from dicom_node.cli.common import (
    ConfigOption,
    settings_for,
)


def serve(config: ConfigOption = None) -> None:
    """Run the node: Storage SCP, completion sweeper (embedded defaults: SQLite, no Redis)."""
    from dicom_node.errors import StartupError  # noqa: PLC0415
    from dicom_node.node import Node  # noqa: PLC0415

    try:
        Node(settings_for(config)).run()  # it makes the data dir once it has the port
    except StartupError as exc:
        from dicom_node.logs import get_logger  # noqa: PLC0415

        get_logger("dicom_node.node").error("node_not_started", reason=str(exc))
        typer.echo(f"dicom-node: not started: {exc}", err=True)
        raise typer.Exit(2) from None


def echo(
    host: str,
    port: int,
    aet: Annotated[str, typer.Argument(help="The called AE title.")],
    calling: Annotated[str, typer.Option(help="Our calling AE title.")] = "DICOM_NODE",
    config: ConfigOption = None,
) -> None:
    """C-ECHO a remote AE, to test a link."""
    from dicom_node.receive.echo import c_echo  # noqa: PLC0415

    settings_for(config)
    result = c_echo(host, port, aet, calling_ae=calling)
    typer.echo(result.message)
    raise typer.Exit(0 if result.ok else 1)


def doctor(config: ConfigOption = None) -> None:
    """Check the configuration as the node would use it: data dir, free disk, the index's
    migrations, models and rules, the broker, each destination's C-ECHO, the accounts. Exit 1
    on a problem (warnings alone exit 0); nothing is created or migrated."""
    from dicom_node import __version__  # noqa: PLC0415
    from dicom_node.admin.doctor import doctor_findings, render  # noqa: PLC0415

    findings = doctor_findings(settings_for(config))
    typer.echo(render(f"dicom-node {__version__} doctor", findings))
    raise typer.Exit(1 if any(f.level == "problem" for f in findings) else 0)


def worker(
    queues: Annotated[str, typer.Option("-Q", "--queues", help="gpu, io or both: gpu,io")] = "gpu",
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-n", help="pool processes (one per GPU)")
    ] = 1,
    config: ConfigOption = None,
) -> None:
    """Run a Celery worker against [queue] broker_url (Redis). Pool: prefork with spawned
    children, so CUDA is only ever initialised in a process that was not forked."""
    settings = settings_for(config)
    if settings.queue.broker_url is None:
        typer.echo(
            "dicom-node: no [queue] broker_url: `serve` runs jobs itself (embedded)", err=True
        )
        raise typer.Exit(2)
    if config is not None:  # the spawned pool children load the same settings
        os.environ["DICOM_NODE_CONFIG"] = str(config.resolve())
    from dicom_node.node import run_celery_worker  # noqa: PLC0415

    run_celery_worker(settings, queues, concurrency)
