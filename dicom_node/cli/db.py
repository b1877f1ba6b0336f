"""``dicom-node db``: migrations and re-indexing."""

from __future__ import annotations

import os
import sys

import typer

from dicom_node.cli.common import (
    ConfigOption,
    engine_for,
    settings_for,
)

app = typer.Typer(rich_markup_mode=None, no_args_is_help=True, help="The index database.")


@app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Apply the index migrations."""
    engine_for(settings_for(config), create=True)
    typer.echo("index is at the latest revision")


@app.command("reindex")
def db_reindex(config: ConfigOption = None) -> None:
    """Walk the storage root and index every stored file the index lacks (what start-up does
    after a crash), with a progress bar."""
    from dicom_node.storage.paths import StorageLayout  # noqa: PLC0415
    from dicom_node.storage.recovery import recover  # noqa: PLC0415

    settings = settings_for(config)
    engine = engine_for(settings, create=True)  # it rebuilds the index from the storage root
    layout = StorageLayout(settings.storage.root)
    total = sum(len(files) for _d, _s, files in os.walk(layout.instances))
    with typer.progressbar(length=total, label="re-indexing", file=sys.stderr) as bar:
        report = recover(layout, engine, progress=bar.update)
    typer.echo(
        f"indexed {len(report.indexed)}, quarantined {len(report.quarantined)}, "
        f"partial files removed {report.partial_removed}"
    )
