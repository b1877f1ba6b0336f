"""The ``dicom-node`` command. Every subcommand takes ``--config FILE`` (or DICOM_NODE_CONFIG)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from dicom_node import logs
from dicom_node.settings import Settings, SettingsError, load_settings, masked

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration.")
studies_app = typer.Typer(help="Studies in the index (no patient names).")
db_app = typer.Typer(no_args_is_help=True, help="The index database.")
rules_app = typer.Typer(no_args_is_help=True, help="Routing rules ([[rules]] in the config).")
app.add_typer(config_app, name="config")
app.add_typer(studies_app, name="studies")
app.add_typer(db_app, name="db")
app.add_typer(rules_app, name="rules")
models_app = typer.Typer(no_args_is_help=True, help="Model plug-ins ([models] root).")
app.add_typer(models_app, name="models")
exports_app = typer.Typer(help="The export outbox: result objects x destinations.")
app.add_typer(exports_app, name="exports")
destinations_app = typer.Typer(help="Result destinations ([[destinations]]) and their circuits.")
app.add_typer(destinations_app, name="destinations")
jobs_app = typer.Typer(help="Inference jobs: list, retry, cancel.")
app.add_typer(jobs_app, name="jobs")
users_app = typer.Typer(no_args_is_help=True, help="Admin UI/API accounts (admin or viewer).")
app.add_typer(users_app, name="users")
audit_app = typer.Typer(help="The audit log: every state change and admin action.")
app.add_typer(audit_app, name="audit")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar="DICOM_NODE_CONFIG", help="TOML configuration file."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _settings(config: Path | None, *, create: bool = False) -> Settings:
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


def _engine(settings: Settings) -> Any:
    from dicom_node.db.migrate import upgrade  # noqa: PLC0415 - keep `--help` fast
    from dicom_node.db.session import make_engine  # noqa: PLC0415

    url = settings.database.url.get_secret_value()
    upgrade(url)
    return make_engine(url)


@app.command()
def serve(config: ConfigOption = None) -> None:
    """Run the node: Storage SCP, completion sweeper (embedded defaults: SQLite, no Redis)."""
    from dicom_node.node import Node  # noqa: PLC0415

    Node(_settings(config, create=True)).run()


@app.command()
def echo(
    host: str,
    port: int,
    aet: Annotated[str, typer.Argument(help="The called AE title.")],
    calling: Annotated[str, typer.Option(help="Our calling AE title.")] = "DICOM_NODE",
    config: ConfigOption = None,
) -> None:
    """C-ECHO a remote AE, to test a link."""
    from dicom_node.receive.echo import c_echo  # noqa: PLC0415

    _settings(config)
    result = c_echo(host, port, aet, calling_ae=calling)
    typer.echo(result.message)
    raise typer.Exit(0 if result.ok else 1)


@config_app.command("show")
def config_show(config: ConfigOption = None) -> None:
    """Print the effective configuration, secrets masked."""
    typer.echo(json.dumps(masked(_settings(config)), indent=2))


@config_app.command("env-example")
def config_env_example() -> None:
    """Print every setting as a DICOM_NODE_* variable (deploy/env.example)."""
    from dicom_node.settings import env_example  # noqa: PLC0415

    typer.echo(env_example(), nl=False)


@studies_app.callback(invoke_without_command=True)
def studies(ctx: typer.Context, as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """List studies, most recent first."""
    if ctx.invoked_subcommand is not None:
        return
    from dicom_node.admin.queries import list_studies  # noqa: PLC0415

    rows = list_studies(_engine(_settings(config)))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"{'STATE':<10} {'SERIES':>6} {'INST':>6}  {'LAST RECEIVED':<32} STUDY UID")
    for r in rows:
        typer.echo(
            f"{r['state']:<10} {r['series']:>6} {r['instances']:>6}  "
            f"{r['last_received']:<32} {r['study_uid']}"
        )


@jobs_app.callback(invoke_without_command=True)
def jobs(ctx: typer.Context, as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """Inference jobs, newest first, with their state and attempts."""
    if ctx.invoked_subcommand is not None:
        return
    from dicom_node.admin.queries import list_jobs  # noqa: PLC0415

    rows = list_jobs(_engine(_settings(config)))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"{'STATE':<14} {'TRY':>5}  {'MODEL':<20} {'RULE':<20} JOB / STUDY")
    for r in rows:
        tries = f"{r['attempts']}/{r['max_attempts']}"
        typer.echo(
            f"{r['state']:<14} {tries:>5}  {r['model']:<20} {r['rule']:<20} "
            f"{r['job_id']} {r['study_uid']}"
        )
        if r["stack"]:
            typer.echo(f"{'':<22}{r['stack']['label']}")
        if r["error"]:
            typer.echo(f"{'':<22}error: {r['error']}")


@exports_app.callback(invoke_without_command=True)
def exports(
    ctx: typer.Context,
    as_json: JsonOption = False,
    job: Annotated[str | None, typer.Option("--job", help="Only this job's rows.")] = None,
    state: Annotated[str | None, typer.Option("--state", help="PENDING, FAILED, ...")] = None,
    config: ConfigOption = None,
) -> None:
    """Outbox rows, newest first: state, attempts, last DIMSE status and error."""
    if ctx.invoked_subcommand is not None:
        return
    from dicom_node.admin.queries import list_exports  # noqa: PLC0415

    rows = list_exports(_engine(_settings(config)), job_id=job, state=state)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(
        f"{'STATE':<11} {'TRY':>5} {'KIND':<4} {'DESTINATION':<16} {'STATUS':<7} EXPORT / JOB"
    )
    for r in rows:
        tries = f"{r['attempts']}/{r['max_attempts']}"
        typer.echo(
            f"{r['state']:<11} {tries:>5} {r['kind']:<4} {r['destination']:<16} "
            f"{r['last_status'] or '-':<7} {r['export_id']} {r['job_id']}"
        )
        if r["last_error"] and r["state"] != "DELIVERED":
            typer.echo(f"{'':<11} {r['last_error']}")


@exports_app.command("resend")
def exports_resend(
    export_id: Annotated[str | None, typer.Argument(help="One outbox row.")] = None,
    job: Annotated[str | None, typer.Option("--job", help="Every row of this job.")] = None,
    failed: Annotated[
        bool, typer.Option("--failed", help="Bulk: every FAILED row (with --destination, its).")
    ] = False,
    destination: Annotated[str | None, typer.Option("--destination")] = None,
    config: ConfigOption = None,
) -> None:
    """Send DELIVERED or FAILED rows again (attempts from zero). Recorded in the audit log."""
    if sum((export_id is not None, job is not None, failed)) != 1:
        typer.echo("dicom-node: give an export ID, --job JOB or --failed", err=True)
        raise typer.Exit(2)
    from dicom_node.admin.actions import resend  # noqa: PLC0415
    from dicom_node.admin.queries import list_exports  # noqa: PLC0415

    engine = _engine(_settings(config))
    actor = _actor()
    if not failed:
        moved = _run_action(lambda: resend(engine, actor, export_id=export_id, job_id=job))
    else:
        rows = [
            r
            for r in list_exports(engine, state="FAILED", limit=1_000_000)
            if destination is None or r["destination"] == destination
        ]
        moved = []
        with typer.progressbar(rows, label="resending", file=sys.stderr) as bar:
            for r in bar:
                moved += resend(engine, actor, export_id=r["export_id"])
        if not moved:
            typer.echo("nothing to resend: no FAILED row matches", err=True)
            raise typer.Exit(1)
    typer.echo(f"{len(moved)} export(s) back to PENDING: " + " ".join(moved))


@destinations_app.callback(invoke_without_command=True)
def destinations(
    ctx: typer.Context, as_json: JsonOption = False, config: ConfigOption = None
) -> None:
    """Configured destinations with their circuit state."""
    if ctx.invoked_subcommand is not None:
        return
    from dicom_node.admin.queries import list_circuits  # noqa: PLC0415

    settings = _settings(config)
    circuits = {c["destination"]: c for c in list_circuits(_engine(settings))}
    rows = [
        {
            "name": d.name,
            "ae_title": d.ae_title,
            "host": d.host,
            "port": d.port,
            "profile": d.profile,
            "tls": d.tls,
            **{
                k: v
                for k, v in circuits.get(d.name, {"circuit": "CLOSED"}).items()
                if k != "destination"
            },
        }
        for d in settings.destinations
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        typer.echo(
            f"{r['name']:<16} {r['ae_title']}@{r['host']}:{r['port']:<6} "
            f"profile={r['profile']:<10} circuit={r['circuit']}"
        )


@destinations_app.command("echo")
def destinations_echo(name: str, config: ConfigOption = None) -> None:
    """C-ECHO one destination with its own settings (TLS included)."""
    from dicom_node.admin.actions import echo_destination  # noqa: PLC0415

    settings = _settings(config)
    error = _run_action(lambda: echo_destination(_engine(settings), settings, name, _actor()))
    typer.echo(error or f"C-ECHO {name}: Success")
    raise typer.Exit(1 if error else 0)


@studies_app.command("show")
def studies_show(uid: str, config: ConfigOption = None) -> None:
    """One study: its series and its timeline of audit events."""
    from dicom_node.admin.queries import show_study  # noqa: PLC0415

    detail = show_study(_engine(_settings(config)), uid)
    if detail is None:
        typer.echo(f"no study {uid}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(detail, indent=2))


@rules_app.command("test")
def rules_test(uid: str, as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """Dry run: which model would run on which stack of a study, and why not the others."""
    from dataclasses import asdict  # noqa: PLC0415

    from dicom_node.jobs.facts import study_stack_facts  # noqa: PLC0415
    from dicom_node.jobs.rules import evaluate  # noqa: PLC0415

    settings = _settings(config)
    with _engine(settings).connect() as conn:
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


@app.command()
def worker(
    queues: Annotated[str, typer.Option("-Q", "--queues", help="gpu, io or both: gpu,io")] = "gpu",
    concurrency: Annotated[
        int, typer.Option("-c", "--concurrency", help="pool processes (one per GPU)")
    ] = 1,
    config: ConfigOption = None,
) -> None:
    """Run a Celery worker against [queue] broker_url (Redis). Pool: prefork with spawned
    children, so CUDA is only ever initialised in a process that was not forked."""
    import os  # noqa: PLC0415

    settings = _settings(config)
    if settings.queue.broker_url is None:
        typer.echo(
            "dicom-node: no [queue] broker_url: `serve` runs jobs itself (embedded)", err=True
        )
        raise typer.Exit(2)
    if config is not None:  # the spawned pool children load the same settings
        os.environ["DICOM_NODE_CONFIG"] = str(config.resolve())
    from workers.celery_app import app as celery_app  # noqa: PLC0415

    celery_app.worker_main(
        [
            "worker",
            "--queues",
            queues,
            "--concurrency",
            str(concurrency),
            "--pool",
            "prefork",
            "--pool-start-method",
            "spawn",
            "--loglevel",
            settings.logging.level,
            "--hostname",
            f"{queues.replace(',', '-')}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@models_app.command("list")
def models_list(as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """Model plug-ins under [models] root, with their manifest checked and weights verified."""
    from dicom_node.admin.models import describe_models  # noqa: PLC0415

    rows = describe_models(_settings(config).models.root)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        for r in rows:
            typer.echo(
                f"{r['name']:<24} {r['version'] or '-':<10} {r['runner'] or '-':<14} {r['status']}"
            )
    raise typer.Exit(0 if all(r["status"] == "ok" for r in rows) else 1)


@models_app.command("evaluate")
def models_evaluate(
    model: Annotated[str, typer.Argument(help="A model under [models] root.")],
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

    settings = _settings(config)
    try:
        loaded = ModelCache(settings.models.root, device or settings.models.device).get(model)
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


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Apply the index migrations."""
    _engine(_settings(config))
    typer.echo("index is at the latest revision")


# --- admin actions (the same functions the web UI calls; audited with the OS user's name) ----


def _actor() -> str:
    """The audit log's actor for a CLI action: the OS account that ran it."""
    import getpass  # noqa: PLC0415

    try:
        return f"cli:{getpass.getuser()}"[:64]
    except (KeyError, OSError):
        return "cli"


def _run_action(do: Any) -> Any:
    from dicom_node.admin.actions import ActionError, NotFoundError  # noqa: PLC0415

    try:
        return do()
    except NotFoundError as exc:
        typer.echo(f"dicom-node: {exc}", err=True)
        raise typer.Exit(2) from exc
    except ActionError as exc:
        typer.echo(f"dicom-node: {exc}", err=True)
        raise typer.Exit(1) from exc


def _new_password(from_stdin: bool) -> str:
    if from_stdin:
        import sys  # noqa: PLC0415

        return sys.stdin.readline().rstrip("\n")
    value: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return value


@users_app.command("add")
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
    settings = _settings(config)
    try:
        add_user(_engine(settings), name, _new_password(password_stdin), Role(role), actor=_actor())
    except UserError as exc:
        typer.echo(f"dicom-node: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"user {name} added ({role})")


@users_app.command("set")
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

    new = _new_password(password_stdin) if (password or password_stdin) else None
    try:
        change_user(
            _engine(_settings(config)),
            name,
            password=new,
            role=Role(role) if role else None,
            disabled=disable,
            actor=_actor(),
        )
    except (UserError, ValueError) as exc:
        typer.echo(f"dicom-node: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"user {name} changed")


@users_app.command("list")
def users_list(as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """Accounts and their roles (never a password or its hash)."""
    from dicom_node.admin.users import list_users  # noqa: PLC0415

    rows = list_users(_engine(_settings(config)))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        state = "disabled" if r["disabled"] else "enabled"
        typer.echo(f"{r['name']:<24} {r['role']:<7} {state:<9} last login {r['last_login_at']}")


@studies_app.command("force-complete")
def studies_force_complete(uid: str, config: ConfigOption = None) -> None:
    """Mark a study still receiving COMPLETE now; its jobs are queued."""
    from dicom_node.admin.actions import force_complete  # noqa: PLC0415

    settings = _settings(config)
    jobs = _run_action(lambda: force_complete(_engine(settings), settings, uid, _actor()))
    typer.echo(f"study {uid} COMPLETE; {len(jobs)} job(s) queued: " + " ".join(jobs))


@studies_app.command("rerun")
def studies_rerun(uid: str, config: ConfigOption = None) -> None:
    """New jobs for a COMPLETE study, as if it completed now."""
    from dicom_node.admin.actions import rerun  # noqa: PLC0415

    settings = _settings(config)
    jobs = _run_action(lambda: rerun(_engine(settings), settings, uid, _actor()))
    typer.echo(f"{len(jobs)} job(s) queued: " + " ".join(jobs))


@jobs_app.command("retry")
def jobs_retry(job_id: str, config: ConfigOption = None) -> None:
    """A FAILED or CANCELLED job back to QUEUED (attempts from zero)."""
    from dicom_node.admin.actions import retry_job  # noqa: PLC0415

    _run_action(lambda: retry_job(_engine(_settings(config)), job_id, _actor()))
    typer.echo(f"job {job_id} QUEUED")


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, config: ConfigOption = None) -> None:
    """A QUEUED or RUNNING job to CANCELLED (a running worker's results are refused)."""
    from dicom_node.admin.actions import cancel_job  # noqa: PLC0415

    _run_action(lambda: cancel_job(_engine(_settings(config)), job_id, _actor()))
    typer.echo(f"job {job_id} CANCELLED")


@audit_app.callback(invoke_without_command=True)
def audit(
    ctx: typer.Context,
    *,
    event: Annotated[
        str | None, typer.Option("--event", help="job.failed, or a prefix: job.")
    ] = None,
    user: Annotated[str | None, typer.Option("--user", help="The actor.")] = None,
    study: Annotated[str | None, typer.Option("--study", help="Study Instance UID.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="YYYY-MM-DD")] = None,
    until: Annotated[str | None, typer.Option("--until", help="YYYY-MM-DD, inclusive")] = None,
    limit: Annotated[int, typer.Option("--limit")] = 500,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV, as the web UI exports it.")] = False,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Audit events, newest first, with the same filters as the web UI."""
    if ctx.invoked_subcommand is not None:
        return
    from datetime import date  # noqa: PLC0415

    from dicom_node.admin.reports import AuditFilter, audit_csv  # noqa: PLC0415
    from dicom_node.admin.reports import audit as audit_rows  # noqa: PLC0415

    try:
        flt = AuditFilter(
            event_type=event,
            actor=user,
            study_uid=study,
            since=date.fromisoformat(since) if since else None,
            until=date.fromisoformat(until) if until else None,
            limit=limit,
        )
    except ValueError as exc:
        typer.echo(f"dicom-node: dates are YYYY-MM-DD ({exc})", err=True)
        raise typer.Exit(2) from exc
    rows = audit_rows(_engine(_settings(config)), flt)
    if as_csv:
        typer.echo(audit_csv(rows), nl=False)
    elif as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        for r in rows:
            typer.echo(
                f"{r['at'][:19]} {r['event']:<26} {r['actor']:<14} {r['study_uid'] or '-'} "
                f"{json.dumps(r['details'], sort_keys=True)}"
            )


@db_app.command("reindex")
def db_reindex(config: ConfigOption = None) -> None:
    """Walk the storage root and index every stored file the index lacks (what start-up does
    after a crash), with a progress bar."""
    from dicom_node.db.migrate import upgrade  # noqa: PLC0415
    from dicom_node.storage.paths import StorageLayout  # noqa: PLC0415
    from dicom_node.storage.recovery import recover  # noqa: PLC0415

    settings = _settings(config)
    upgrade(settings.database.url.get_secret_value())
    layout = StorageLayout(settings.storage.root)
    total = sum(len(files) for _d, _s, files in os.walk(layout.instances))
    with typer.progressbar(length=total, label="re-indexing", file=sys.stderr) as bar:
        report = recover(layout, _engine(settings), progress=bar.update)
    typer.echo(
        f"indexed {len(report.indexed)}, quarantined {len(report.quarantined)}, "
        f"partial files removed {report.partial_removed}"
    )


def main() -> None:
    try:
        app()
    except BrokenPipeError:  # `dicom-node studies | head`
        sys.exit(0)
