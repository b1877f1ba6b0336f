"""``dicom-node rules``: dry-run the routing rules on a stored study."""

from __future__ import annotations

import json

import typer

from dicom_node.cli.common import (
    ConfigOption,
    JsonOption,
    engine_for,
    settings_for,
)

app = typer.Typer(
    rich_markup_mode=None, no_args_is_help=True, help="Routing rules ([[rules]] in the config)."
)


@app.command("test")
def rules_test(uid: str, as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """Dry run: which model would run on which stack of a study, and why not the others."""
    from dataclasses import asdict  # noqa: PLC0415

    from dicom_node.jobs.facts import study_stack_facts  # noqa: PLC0415
    from dicom_node.jobs.rules import evaluate  # noqa: PLC0415

    settings = settings_for(config)
    with engine_for(settings).connect() as conn:
        facts = study_stack_facts(conn, uid, settings.storage.root)
    if facts is None:
        typer.echo(f"no study {uid}", err=True)
        raise typer.Exit(1)
    outcomes = evaluate(settings.rules, facts)
    if as_json:
        typer.echo(json.dumps([asdict(o) for o in outcomes], indent=2))
        return
    if not outcomes:
        typer.echo("no [[rules]] configured")
    described = {f.key: f for f in facts}
    marks = {"chosen": "+", "refused": "!", "not chosen": "-"}
    for o in outcomes:
        verdict = f"runs {', '.join(o.models)} ({o.priority})" if o.chosen else "does not apply"
        if o.refused:
            verdict += f"; {len(o.refused)} refused (FAILED jobs)"
        typer.echo(f"rule {o.rule}: {verdict}")
        for v in o.stacks:
            f = described[v.key]
            spacing = f", {v.spacing}" if v.spacing else ""
            typer.echo(
                f"  {marks[v.verdict]} {v.series_uid}  {f.modality} "
                f"{f.series_description or ''!s}".rstrip()
            )
            typer.echo(f"      {v.label}{spacing}: {v.why}")
