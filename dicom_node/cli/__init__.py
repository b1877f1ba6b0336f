"""The ``dicom-node`` command. Every subcommand takes ``--config FILE`` (or DICOM_NODE_CONFIG).

One module per command group; the node's own wiring (``serve``, ``worker``) is in
``dicom_node.node``, the composition root.
"""

from __future__ import annotations

import sys

import typer

from dicom_node.cli import (
    audit,
    config,
    db,
    destinations,
    exports,
    jobs,
    models,
    node,
    rules,
    studies,
    users,
)

# rich_markup_mode=None in every group: help prints as written. Rich markup would read the
# config's own names ("[models] root", "[[rules]]") as style tags and drop them.
app = typer.Typer(
    rich_markup_mode=None, no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0]
)
app.command()(node.serve)
app.command()(node.echo)
app.command()(node.worker)
app.command()(node.doctor)
for name, group in [
    ("config", config),
    ("studies", studies),
    ("db", db),
    ("rules", rules),
    ("models", models),
    ("exports", exports),
    ("destinations", destinations),
    ("jobs", jobs),
    ("users", users),
    ("audit", audit),
]:
    app.add_typer(group.app, name=name)


def main() -> None:
    try:
        app()
    except BrokenPipeError:  # `dicom-node studies | head`
        sys.exit(0)
