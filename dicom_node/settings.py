"""One frozen settings object for every stage of the flow.

Built once at process start from, in order of precedence: ``DICOM_NODE_*`` environment variables
(nested keys joined by ``__``, e.g. ``DICOM_NODE_NODE__PORT=11112``), then the TOML file given by
``--config`` or ``DICOM_NODE_CONFIG``, then the defaults below. Defaults live here and nowhere else.

Nothing depends on the working directory. Storage, database and the site's models live under one
data directory (``[node] data_dir``; else ``DICOM_NODE_HOME``; else ``/var/lib/dicom-node`` for
root or a systemd service, the user's data folder otherwise). Relative paths in a config file
resolve against that file's folder; the reference model ships inside the package.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_ENV = "DICOM_NODE_CONFIG"
HOME_ENV = "DICOM_NODE_HOME"
SERVICE_DATA_DIR = Path("/var/lib/dicom-node")
# The models that ship inside the package (package data): found whatever the working directory.
BUILTIN_MODELS = Path(__file__).resolve().parent / "models"
DB_FILE = "dicom-node.db"
_config_file: ContextVar[Path | None] = ContextVar("_config_file", default=None)


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of an SQLite file (``sqlite:////abs/path`` for an absolute path)."""
    return f"sqlite:///{path}"


def default_data_dir() -> Path:
    """``$DICOM_NODE_HOME``; else systemd's ``StateDirectory`` for a service, or
    ``/var/lib/dicom-node`` for root; else the user's data folder (``$XDG_DATA_HOME`` or
    ``~/.local/share``) + ``dicom-node``."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).absolute()
    if os.environ.get("STATE_DIRECTORY"):  # systemd, StateDirectory=dicom-node
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if os.geteuid() == 0:
        return SERVICE_DATA_DIR
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "dicom-node"


AETitle = Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[\x20-\x5b\x5d-\x7e]+$")]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NodeSettings(_Section):
    """The Storage SCP's identity and association limits."""

    ae_title: AETitle = "DICOM_NODE"
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="storage, database and models live under it; default: $DICOM_NODE_HOME, "
        "else /var/lib/dicom-node as root or a service, else the user's data folder",
    )
    host: str = "0.0.0.0"  # noqa: S104 - a DICOM node listens for modalities on the LAN
    port: int = Field(default=11112, ge=1, le=65535)
    require_called_ae: bool = True
    max_associations: int = Field(default=32, ge=1, description="node-wide, all SCP processes")
    max_unassociated_per_host: int = Field(
        default=8, ge=1, description="sockets without a complete A-ASSOCIATE-RQ, per host"
    )
    max_unassociated: int = Field(default=64, ge=1, description="the same, in total")
    max_pdu_bytes: int = Field(default=262_144, ge=0, description="0 = unlimited")
    scp_processes: int = Field(default=0, ge=0, description="0 = one per CPU core")
    acse_timeout_s: float = Field(
        default=30.0, gt=0, description="the A-ASSOCIATE-RQ must be complete this soon after accept"
    )
    dimse_timeout_s: float = Field(default=60.0, gt=0)
    network_timeout_s: float = Field(
        default=120.0, gt=0, description="each PDU complete within this of its first byte; idle"
    )


class StorageSettings(_Section):
    """Where acknowledged instances live, and what is kept free."""

    root: Path = Field(
        default_factory=lambda: default_data_dir() / "storage",
        description="default: <data_dir>/storage",
    )
    min_free_mb: int = Field(default=1024, ge=0, description="below this, 0xA700 and no new assocs")
    duplicate_policy: Literal["keep_first", "overwrite"] = "keep_first"
    fsync: bool = True
    group: str | None = Field(
        default=None,
        description="share the storage with this group (files 0660, folders 2770); "
        "default: the node's user only (0600 / 0700)",
    )


class DatabaseSettings(_Section):
    """The index. SQLite (WAL) by default; ``postgresql+psycopg://`` for a fleet."""

    url: SecretStr = Field(
        default_factory=lambda: SecretStr(sqlite_url(default_data_dir() / DB_FILE)),
        description="default: sqlite:///<data_dir>/dicom-node.db",
    )


class CompletionSettings(_Section):
    """When a study counts as complete. See ``dicom_node.studies.policy``."""

    quiet_period_s: float = Field(default=60.0, gt=0)
    settle_s: float = Field(default=3.0, ge=0)
    force_complete_after_s: float = Field(default=3600.0, gt=0)
    sweep_interval_s: float = Field(default=1.0, gt=0)


class SecuritySettings(_Section):
    """Who may associate, and TLS."""

    allowed_calling_aes: tuple[AETitle, ...] = ()
    allowed_hosts: tuple[str, ...] = Field(default=(), description="IPs or CIDRs; empty = any")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = Field(default=None, description="set to require client certificates")
    tls_handshake_timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("allowed_hosts")
    @classmethod
    def _networks_parse(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        import ipaddress  # noqa: PLC0415 - only needed to validate

        for item in value:
            ipaddress.ip_network(item, strict=False)
        return value


class RuleMatch(_Section):
    """What a series must be for a rule to take it. Empty = any. Lists match any of their values,
    except ``image_type``, all of whose values must be present."""

    modality: tuple[str, ...] = ()
    body_part: tuple[str, ...] = ()
    series_description: str | None = Field(default=None, description="regex, case-insensitive")
    sop_class: tuple[str, ...] = ()
    image_type: tuple[str, ...] = ()
    exclude_image_type: tuple[str, ...] = ("LOCALIZER", "DERIVED", "SECONDARY")
    orientation: tuple[Literal["AXIAL", "SAGITTAL", "CORONAL", "OBLIQUE"], ...] = ("AXIAL",)
    min_slices: int | None = Field(default=None, ge=1)
    max_slices: int | None = Field(default=None, ge=1)
    min_thickness_mm: float | None = Field(default=None, ge=0)
    max_thickness_mm: float | None = Field(default=None, ge=0)
    calling_ae: tuple[AETitle, ...] = ()
    called_ae: tuple[AETitle, ...] = ()

    @field_validator("series_description")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value


class RuleSettings(_Section):
    """One routing rule (``[[rules]]``): which series of a complete study go to which models."""

    name: str = Field(min_length=1, max_length=64)
    models: tuple[str, ...] = Field(min_length=1)
    priority: Literal["stat", "routine"] = "routine"
    select: Literal["most_slices", "thinnest_slices", "all"] = "most_slices"
    destinations: tuple[str, ...] = ()
    confidence_map: bool = Field(
        default=False,
        description="also send the model's per-voxel confidence as a Parametric Map",
    )
    gap_tolerance: float = Field(
        default=1.5,
        ge=1.0,
        description="slices are contiguous when each gap is at most their thickness x this",
    )
    interpolate_gaps_mm: float = Field(
        default=0.0,
        ge=0,
        description="process across wider gaps up to this many mm (interpolated); 0 = refuse",
    )
    match: RuleMatch = RuleMatch()


# What a node with no [[rules]] does: CT series to the reference model shipped in the package.
DEFAULT_RULES: tuple[RuleSettings, ...] = (
    RuleSettings(
        name="ct-tissue",
        models=("ct-tissue",),
        match=RuleMatch(modality=("CT",), min_slices=10),
    ),
)


class JobSettings(_Section):
    """Attempts and leases of inference jobs (the database is the queue of record)."""

    max_attempts: int = Field(default=3, ge=1, description="then FAILED, not requeued forever")
    lease_s: float = Field(default=120.0, gt=0, description="a RUNNING job must heartbeat within")
    soft_time_limit_s: float = Field(default=900.0, gt=0, description="then the job FAILS")
    hard_time_limit_s: float = Field(default=960.0, gt=0, description="then the worker is killed")

    @model_validator(mode="after")
    def _hard_above_soft(self) -> JobSettings:
        if self.hard_time_limit_s <= self.soft_time_limit_s:
            raise ValueError("hard_time_limit_s must be above soft_time_limit_s")
        return self


class QueueSettings(_Section):
    """How job ids reach workers. No broker = embedded: the node runs jobs in child processes."""

    broker_url: SecretStr | None = Field(
        default=None, description="redis://host:6379/0; empty = embedded"
    )
    embedded_workers: int = Field(default=1, ge=0, description="child processes when embedded")
    reconcile_interval_s: float = Field(default=5.0, gt=0)
    unclaimed_after_s: float = Field(default=60.0, gt=0, description="re-enqueue jobs not claimed")
    visibility_timeout_s: float = Field(default=7200.0, gt=0, description="above the hard limit")


class ModelSettings(_Section):
    """Where the site's model plug-ins live and run (the built-in models are searched after).

    A plug-in is ``<root>/<name>/manifest.toml`` with its weights."""

    root: Path = Field(
        default_factory=lambda: default_data_dir() / "models",
        description="default: <data_dir>/models; the built-in models are searched after it",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    results_root: Path | None = Field(default=None, description="default: <storage.root>/results")


class ProfileSettings(_Section):
    """What a destination gets (``[profiles.<name>]``); ``default`` and ``legacy`` are built in."""

    seg: bool = True
    sr: bool = True
    sr_class: Literal["comprehensive", "comprehensive3d"] = Field(
        default="comprehensive", description="88.33; older Slicer and some PACS refuse 88.34"
    )
    omit_empty_frames: bool = Field(
        default=False, description="smaller SEG; OHIF has misplaced such SEGs (PITFALLS 19)"
    )
    key_images: int = Field(
        default=0, ge=0, le=20, description="Secondary Capture key images for PACS without SEG"
    )
    kos: bool = Field(
        default=False,
        description="a Key Object Selection of the key images, for PACS viewers without SEG/SR",
    )
    seg_geometry: Literal["source", "regular"] = Field(
        default="source",
        description="source: SEG frames on the source frames (OHIF, PACS viewers); regular: on a "
        "rectangular grid when the stack is tilted or irregular (3D Slicer, dcmqi, VTK tools)",
    )

    @model_validator(mode="after")
    def _sr_needs_seg(self) -> ProfileSettings:
        if self.sr and not self.seg:
            raise ValueError("an SR references SEG segments: sr = true needs seg = true")
        return self


BUILTIN_PROFILES: dict[str, ProfileSettings] = {
    "default": ProfileSettings(),
    "legacy": ProfileSettings(key_images=3, kos=True),
    "slicer": ProfileSettings(seg_geometry="regular"),
}


class DestinationSettings(_Section):
    """One place results go (``[[destinations]]``): a PACS, a viewer's archive, a router."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    ae_title: AETitle
    host: str
    port: int = Field(ge=1, le=65535)
    calling_ae: AETitle | None = Field(default=None, description="default: node.ae_title")
    profile: str = "default"
    tls: bool = False
    tls_ca: Path | None = Field(default=None, description="verify the PACS; none = system CAs")
    tls_cert: Path | None = Field(default=None, description="client certificate, if required")
    tls_key: Path | None = None
    max_attempts: int = Field(default=10, ge=1, description="sends before the row is FAILED")
    backoff_initial_s: float = Field(default=10.0, gt=0)
    backoff_max_s: float = Field(default=900.0, gt=0)
    circuit_failures: int = Field(default=3, ge=1, description="failed associations to open it")
    circuit_probe_s: float = Field(default=30.0, gt=0, description="C-ECHO probe interval")
    dimse_timeout_s: float = Field(default=300.0, gt=0, description="a large SEG takes a while")
    acse_timeout_s: float = Field(default=30.0, gt=0)


class ExportSettings(_Section):
    """The export outbox: how the node sends results to ``[[destinations]]``."""

    poll_interval_s: float = Field(default=1.0, gt=0)
    lease_s: float = Field(default=900.0, gt=0, description="a SENDING row older is retried")
    jitter: float = Field(default=0.2, ge=0, lt=1, description="backoff x uniform(1-j, 1+j)")


class AdminSettings(_Section):
    """The admin web UI and JSON API (served by ``dicom-node serve``), and /metrics."""

    enabled: bool = True
    host: str = Field(default="127.0.0.1", description="loopback: put a TLS proxy in front")
    port: int = Field(default=8080, ge=1, le=65535)
    session_secret: SecretStr | None = Field(
        default=None,
        description="signs session cookies; default: a random one kept (0600) in the storage root",
    )
    session_max_age_s: float = Field(
        default=8 * 3600, gt=0, description="a session ends this long after login"
    )
    session_idle_s: float = Field(
        default=30 * 60, gt=0, description="or after this long without a request"
    )
    secure_cookies: bool = Field(default=False, description="true behind an HTTPS proxy")
    metrics_token: SecretStr | None = Field(
        default=None, description="when set, /metrics needs 'Authorization: Bearer TOKEN'"
    )
    show_accession: bool = Field(
        default=False, description="show accession numbers in the UI (default: their hash)"
    )


class LoggingSettings(_Section):
    """JSON logs on stderr; never patient names or IDs."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_output: bool = True


class Settings(BaseSettings):
    """The whole configuration. Frozen: build it once, pass it down."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix="DICOM_NODE_",
        env_nested_delimiter="__",
    )

    node: NodeSettings = Field(default_factory=NodeSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    completion: CompletionSettings = CompletionSettings()
    security: SecuritySettings = SecuritySettings()
    logging: LoggingSettings = LoggingSettings()
    jobs: JobSettings = JobSettings()
    queue: QueueSettings = QueueSettings()
    models: ModelSettings = Field(default_factory=ModelSettings)
    export: ExportSettings = ExportSettings()
    admin: AdminSettings = AdminSettings()
    rules: tuple[RuleSettings, ...] = Field(
        default=DEFAULT_RULES, description="default: CT series to the ct-tissue reference model"
    )
    destinations: tuple[DestinationSettings, ...] = ()
    profiles: dict[str, ProfileSettings] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _under_the_data_dir(cls, data: Any) -> Any:
        """An explicit ``[node] data_dir`` moves every path not set on its own."""
        if not isinstance(data, dict):
            return data
        node = data.get("node")
        home = node.get("data_dir") if isinstance(node, dict) else None
        if home is None:
            return data
        home = Path(home)
        derived = {
            "storage": ("root", home / "storage"),
            "database": ("url", sqlite_url(home / DB_FILE)),
            "models": ("root", home / "models"),
        }
        data = dict(data)
        for section, (key, value) in derived.items():
            current = data.get(section, {})
            if isinstance(current, dict) and key not in current:
                data[section] = {**current, key: value}
        return data

    @model_validator(mode="after")
    def _names_resolve(self) -> Settings:
        names = [d.name for d in self.destinations]
        if len(set(names)) != len(names):
            raise ValueError("destination names must be distinct")
        for dest in self.destinations:
            if dest.profile not in self.all_profiles:
                raise ValueError(f"destination {dest.name!r}: no profile {dest.profile!r}")
        for rule in self.rules:
            for name in rule.destinations:
                if name not in names:
                    raise ValueError(f"rule {rule.name!r}: no destination {name!r}")
        return self

    @property
    def all_profiles(self) -> dict[str, ProfileSettings]:
        return {**BUILTIN_PROFILES, **self.profiles}

    def destinations_for(self, rule: str) -> tuple[DestinationSettings, ...]:
        """The rule's named destinations; a rule that names none sends to every one."""
        named = next((r.destinations for r in self.rules if r.name == rule), ())
        if not named:
            return self.destinations
        return tuple(d for d in self.destinations if d.name in named)

    def rule(self, name: str) -> RuleSettings | None:
        return next((r for r in self.rules if r.name == name), None)

    def destination(self, name: str) -> DestinationSettings | None:
        return next((d for d in self.destinations if d.name == name), None)

    @model_validator(mode="after")
    def _visibility_above_limits(self) -> Settings:
        if self.queue.visibility_timeout_s <= self.jobs.hard_time_limit_s:
            raise ValueError(
                "queue.visibility_timeout_s must be above jobs.hard_time_limit_s, or Redis "
                "redelivers a running task to a second worker (PITFALLS 23)"
            )
        return self

    @property
    def results_root(self) -> Path:
        return self.models.results_root or self.storage.root / "results"

    @property
    def model_path(self) -> tuple[Path, ...]:
        """Where models are looked for, first match wins: the site's root, then the built-ins."""
        return tuple(dict.fromkeys((self.models.root, BUILTIN_MODELS)))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = _AnchoredToml(settings_cls, toml_file=_config_file.get())
        return (init_settings, env_settings, toml)


class _AnchoredToml(TomlConfigSettingsSource):
    """The config file, with its relative paths made absolute against the file's own folder
    (``root = "storage"`` beside ``/etc/dicom-node/node.toml`` is ``/etc/dicom-node/storage``)."""

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        path = _config_file.get()
        if path is None:
            return data
        return _anchored(data, Settings, path.resolve().parent)


def _anchored(data: dict[str, Any], model: type[BaseModel], base: Path) -> dict[str, Any]:
    out = dict(data)
    for name, value in data.items():
        info = model.model_fields.get(name)
        if info is None:
            continue
        kind = _field_kind(info.annotation)
        if kind is Path and isinstance(value, str) and value and not Path(value).is_absolute():
            out[name] = str(base / value)
        elif kind is SecretStr and name == "url" and isinstance(value, str):
            out[name] = _anchored_sqlite(value, base)
        elif isinstance(kind, type) and issubclass(kind, BaseModel):
            if isinstance(value, dict):
                out[name] = _anchored(value, kind, base)
            elif isinstance(value, list):
                out[name] = [_anchored(v, kind, base) if isinstance(v, dict) else v for v in value]
    return out


def _field_kind(annotation: Any) -> Any:
    """``Path`` for Path / Path | None, the model for a section or a tuple of tables."""
    import typing  # noqa: PLC0415

    if annotation is Path or annotation is SecretStr:
        return annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        kind = _field_kind(arg)
        if kind is not None:
            return kind
    return None


def _anchored_sqlite(url: str, base: Path) -> str:
    prefix = "sqlite:///"
    rest = url[len(prefix) :]
    if not url.startswith(prefix) or not rest or rest.startswith(("/", ":memory:")):
        return url
    return sqlite_url(base / rest)


class SettingsError(Exception):
    """A configuration value is invalid; the message names the key."""


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the frozen settings from the TOML file, the environment and ``overrides``."""
    if config_file is None and os.environ.get(CONFIG_ENV):
        config_file = Path(os.environ[CONFIG_ENV])
    if config_file is not None and not config_file.is_file():
        raise SettingsError(f"config file not found: {config_file}")
    token = _config_file.set(config_file)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None
    except ValueError as exc:  # TOML syntax errors surface as ValueError subclasses
        raise SettingsError(f"cannot read {config_file}: {exc}") from None
    finally:
        _config_file.reset(token)


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        lines.append(f"invalid setting {key}: {error['msg']} (got {error.get('input')!r})")
    return "\n".join(lines)


def masked(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, with secrets masked (passwords in URLs too)."""
    data = settings.model_dump(mode="json")
    url = settings.database.url.get_secret_value()
    data["database"]["url"] = _mask_url(url)
    if settings.queue.broker_url is not None:
        data["queue"]["broker_url"] = _mask_url(settings.queue.broker_url.get_secret_value())
    return data


def _mask_url(url: str) -> str:
    from sqlalchemy.engine import make_url  # noqa: PLC0415 - keep settings import-light
    from sqlalchemy.exc import ArgumentError  # noqa: PLC0415

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # not a URL SQLAlchemy parses (a broker's scheme): mask it by hand
        from urllib.parse import urlsplit, urlunsplit  # noqa: PLC0415

        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


_TABLES = {
    "rules": "[[rules]] routing rules are lists of tables",
    "destinations": "[[destinations]] result destinations are lists of tables",
    "profiles": "[profiles.<name>] destination profiles are tables",
}


def env_example() -> str:
    """``deploy/env.example``: every setting as a ``DICOM_NODE_*`` variable with its default."""
    lines = [
        "# Generated by `dicom-node config env-example` from dicom_node/settings.py. Do not edit.",
        "# Every key can also be set in the TOML file given by --config / DICOM_NODE_CONFIG.",
    ]
    defaults = Settings.model_construct()
    for section in Settings.model_fields:
        if section in _TABLES:
            lines.append(f"\n# {_TABLES[section]}: set them in the TOML file")
            continue
        model = type(getattr(defaults, section))
        lines.append(f"\n# [{section}] {(model.__doc__ or '').strip().splitlines()[0]}")
        for name, info in model.model_fields.items():
            value = getattr(getattr(defaults, section), name)
            if info.default_factory is not None:
                value = None  # derived from the data dir where it runs: the note says how
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if isinstance(value, tuple):
                value = ",".join(value) if value else ""
            note = f"  # {info.description}" if info.description else ""
            if isinstance(value, bool):
                value = str(value).lower()
            rendered = "" if value is None else value
            lines.append(f"# DICOM_NODE_{section.upper()}__{name.upper()}={rendered}{note}")
    return "\n".join(lines) + "\n"
