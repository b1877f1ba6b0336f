"""``dicom-node models``: list and evaluate model plug-ins."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from dicom_node.cli import common
from dicom_node.cli.common import ConfigOption, JsonOption

app = typer.Typer(
    rich_markup_mode=None,
    no_args_is_help=True,
    help="Model plug-ins ([models] root, then the built-in models).",
)


@app.command("list")
def models_list(as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """Model plug-ins on the search path ([models] root, then the built-in models), with their
    manifest checked and weights verified. Exit 1 when one is broken or none is found."""
    from dicom_node.admin.read.models import describe_models  # noqa: PLC0415

    where = common.settings_for(config).model_path
    rows = describe_models(where)
    if not rows:
        looked = ", ".join(str(p) for p in where)
        typer.echo(f"dicom-node: no model plug-ins (<name>/manifest.toml) in {looked}", err=True)
        raise typer.Exit(1)
    common.emit(
        rows,
        as_json,
        lambda r: [
            f"{r.name:<24} {r.version or '-':<10} {r.runner or '-':<14} {r.status:<6} {r.folder}"
        ],
        header=f"{'name':<24} {'version':<10} {'runner':<14} {'status':<6} folder",
    )
    raise typer.Exit(0 if all(r.status == "ok" for r in rows) else 1)


@app.command("evaluate")
def models_evaluate(
    model: Annotated[str, typer.Argument(help="A model on the search path (models list).")],
    *,
    cases: Annotated[Path, typer.Option("--cases", help="Folder of DICOM image series.")],
    reference: Annotated[
        Path | None,
        typer.Option("--reference", help="Folder of reference DICOM SEGs; default: the labeler."),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Report folder.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    config: ConfigOption = None,
) -> None:
    """Run MODEL on local cases: per label Dice, sensitivity, specificity and volume difference
    against reference SEGs (or the model's classical labeler). Prints a table, writes JSON + PNG."""
    from dicom_node.errors import Permanent  # noqa: PLC0415
    from workers import evaluate as ev  # noqa: PLC0415 - torch only for this command
    from workers.inference.runners import ModelCache  # noqa: PLC0415

    settings = common.settings_for(config)
    try:
        loaded = ModelCache(settings.model_path, device or settings.models.device).get(model)
        series = ev.find_cases(cases)
        references = ev.find_references(reference) if reference is not None else None
        with typer.progressbar(length=len(series), label="evaluating", file=sys.stderr) as bar:
            report = ev.evaluate(loaded, series, references, progress=lambda _: bar.update(1))
    except Permanent as exc:
        typer.echo(f"dicom-node: {exc}", err=True)
        raise typer.Exit(1) from None
    json_path, png_path = ev.write_report(report, out or Path(f"evaluation-{model}"))
    typer.echo(ev.table(report))
    typer.echo(f"wrote {json_path} and {png_path}")
