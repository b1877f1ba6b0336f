"""``dicom-node users``: admin UI/API accounts."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from dicom_node.cli.common import (
    ConfigOption,
    JsonOption,
    actor,
    engine_for,
    new_password,
    settings_for,
)

app = typer.Typer(
    rich_markup_mode=None, no_args_is_help=True, help="Admin UI/API accounts (admin or viewer)."
)


@app.command("add")
def users_add(
    name: str,
    role: Annotated[str, typer.Option("--role", help="admin (may act) or viewer")] = "viewer",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Create an account (the first admin: `dicom-node users add NAME --role admin`)."""
    from dicom_node.admin.users import Role, UserError, add_user  # noqa: PLC0415

    if role not in {str(r) for r in Role}:
        typer.echo("dicom-node: --role is admin or viewer", err=True)
        raise typer.Exit(2)
    settings = settings_for(config, create=True)  # the first admin may come before `serve`
    try:
        add_user(
            engine_for(settings, create=True),
            name,
            new_password(password_stdin),
            Role(role),
            actor=actor(),
        )
    except UserError as exc:
        typer.echo(f"dicom-node: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"user {name} added ({role})")


@app.command("set")
def users_set(
    name: str,
    *,
    role: Annotated[str | None, typer.Option("--role", help="admin or viewer")] = None,
    password: Annotated[bool, typer.Option("--password", help="Prompt for a new one.")] = False,
    password_stdin: Annotated[bool, typer.Option("--password-stdin")] = False,
    disable: Annotated[bool | None, typer.Option("--disable/--enable")] = None,
    config: ConfigOption = None,
) -> None:
    """Change a role, a password, or disable an account (its sessions end at once)."""
    from dicom_node.admin.users import Role, UserError, change_user  # noqa: PLC0415

    new = new_password(password_stdin) if (password or password_stdin) else None
    try:
        change_user(
            engine_for(settings_for(config)),
            name,
            password=new,
            role=Role(role) if role else None,
            disabled=disable,
            actor=actor(),
        )
    except (UserError, ValueError) as exc:
        typer.echo(f"dicom-node: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"user {name} changed")


@app.command("list")
def users_list(as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """Accounts and their roles (never a password or its hash)."""
    from dicom_node.admin.users import list_users  # noqa: PLC0415

    rows = list_users(engine_for(settings_for(config)))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        state = "disabled" if r["disabled"] else "enabled"
        typer.echo(f"{r['name']:<24} {r['role']:<7} {state:<9} last login {r['last_login_at']}")
