"""What every command shares: the ``--config`` and ``--json`` options, settings and engine
loading with clear exit codes, and the actor name CLI actions are audited under."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from dicom_node import logs
from dicom_node.settings import Settings, SettingsError, load_settings

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar="DICOM_NODE_CONFIG", help="TOML configuration file."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def settings_for(config: Path | None, *, create: bool = False) -> Settings:
    """The settings, the logs configured, and the file modes set (``storage.modes``)."""
    try:
        settings = load_settings(config)
    except SettingsError as exc:
        typer.echo(f"dicom-node: {exc}", err=True)
        raise typer.Exit(2) from None
    logs.configure(settings.logging.level, json_output=settings.logging.json_output)
    from dicom_node.storage.modes import FileModeError, secure  # noqa: PLC0415

    try:
        secure(settings, create=create)
    except FileModeError as exc:
        typer.echo(f"dicom-node: {exc}", err=True)
        raise typer.Exit(2) from None
    return settings


def engine_for(settings: Settings, *, create: bool = False) -> Any:
    """The index, migrated to the latest revision. Says on stderr which data directory and
    database it is; unless ``create`` (serve, db upgrade, users add), a database that is not
    there yet is an error (exit 1), not a new empty index."""
    from dicom_node.db.migrate import upgrade  # noqa: PLC0415 - keep `--help` fast
    from dicom_node.db.session import database_exists, make_engine  # noqa: PLC0415
    from dicom_node.settings import masked  # noqa: PLC0415

    url = settings.database.url.get_secret_value()
    shown = masked(settings)["database"]["url"]
    typer.echo(f"dicom-node: data dir {settings.node.data_dir}, database {shown}", err=True)
    if not create and not database_exists(url):
        typer.echo(
            f"dicom-node: no index at {shown}: no node has used this data dir yet. Point "
            "--config, DICOM_NODE_CONFIG or DICOM_NODE_HOME at the node's own, or start "
            "`dicom-node serve` first",
            err=True,
        )
        raise typer.Exit(1)
    upgrade(url)
    return make_engine(url)


def index(config: Path | None) -> Any:
    """The existing index named by the configuration (``engine_for(settings_for(config))``)."""
    return engine_for(settings_for(config))


def to_json(value: Any) -> Any:
    """Read-model rows as JSON-ready values (dataclasses to dicts, recursively)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def emit(
    rows: Sequence[Any] | Any,
    as_json: bool,
    render: Callable[[Any], Iterable[str]],
    header: str | None = None,
) -> None:
    """A read model's rows: as JSON with ``--json`` (the web API's shape), else a header and
    the lines ``render`` makes of each row (or of the one object given)."""
    if as_json:
        typer.echo(json.dumps(to_json(rows), indent=2))
        return
    if header is not None:
        typer.echo(header)
    for row in rows if isinstance(rows, list | tuple) else [rows]:
        for line in render(row):
            typer.echo(line)


def actor() -> str:
    """The audit log's actor for a CLI action: the OS account that ran it."""
    import getpass  # noqa: PLC0415

    try:
        return f"cli:{getpass.getuser()}"[:64]
    except (KeyError, OSError):
        return "cli"


def run_action(do: Any) -> Any:
    """An admin action (the same functions the web UI calls): exit 2 for what does not exist,
    1 for what may not be done, with the reason on stderr."""
    from dicom_node.admin.actions import ActionError, NotFoundError  # noqa: PLC0415

    try:
        return do()
    except NotFoundError as exc:
        typer.echo(f"dicom-node: {exc}", err=True)
        raise typer.Exit(2) from exc
    except ActionError as exc:
        typer.echo(f"dicom-node: {exc}", err=True)
        raise typer.Exit(1) from exc


def new_password(from_stdin: bool) -> str:
    if from_stdin:
        import sys  # noqa: PLC0415

        return sys.stdin.readline().rstrip("\n")
    value: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return value
