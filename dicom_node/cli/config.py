"""``dicom-node config``: the effective configuration."""

from __future__ import annotations

import json

import typer

from dicom_node.cli.common import (
    ConfigOption,
    settings_for,
)
from dicom_node.settings import masked

app = typer.Typer(rich_markup_mode=None, no_args_is_help=True, help="Inspect the configuration.")


@app.command("show")
def config_show(config: ConfigOption = None) -> None:
    """Print the effective configuration, secrets masked."""
    typer.echo(json.dumps(masked(settings_for(config)), indent=2))


@app.command("env-example")
def config_env_example() -> None:
    """Print every setting as a DICOM_NODE_* variable (deploy/env.example)."""
    from dicom_node.settings import env_example  # noqa: PLC0415

    typer.echo(env_example(), nl=False)
