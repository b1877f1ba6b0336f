"""structlog JSON logs. Context (association id, calling AE, study UID) is bound, never PHI.

Every line is one JSON object: the node's own events, what pynetdicom, pydicom, uvicorn and
Celery log through the standard library and Python warnings (rendered by the same processors),
and uncaught exceptions in any thread (``sys.excepthook`` / ``threading.excepthook``). pydicom's
read-time value validation is off: its warnings quote values, which may be PHI. Strings are
capped at ``MAX_VALUE_CHARS`` (a peer chooses AE titles, UIDs and error comments); JSON escapes
the rest.

pynetdicom's own logger is kept at WARNING: at INFO/DEBUG it prints data set contents, which
may hold patient names (it is also slow on the C-STORE path). Its traceback for a socket the node
closed on purpose (a PDU over the limit, a PDU past its deadline) is dropped: the node's own
``pdu_refused`` / ``pdu_timed_out`` event says what happened.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import MutableMapping
from types import TracebackType
from typing import Any, TextIO

import structlog

MAX_VALUE_CHARS = 2000


def _cap(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str) and len(value) > MAX_VALUE_CHARS and key != "exception":
            event[key] = f"{value[:MAX_VALUE_CHARS]}… ({len(value)} chars)"
    return event


class DeliberateCloseError(OSError):
    """A socket the node closed on purpose (a receive bound, ``receive.server``): pynetdicom
    logs the error with a traceback, which this module drops."""


class _DropDeliberateCloses(logging.Filter):
    """pynetdicom logs a traceback when the node's receive bounds close a socket."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], DeliberateCloseError | TimeoutError):
            record.exc_info = None
            record.exc_text = None
        return True


class _JsonHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The standard library's records, rendered as the node's own JSON lines."""


def configure(
    level: str = "INFO", *, json_output: bool = True, stream: TextIO | None = None
) -> None:
    """Every logger of the process to ``stream`` (stderr by default)."""
    out = stream if stream is not None else sys.stderr
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _cap,
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        # one write per line (message and newline together): processes sharing a log file never
        # interleave inside a line
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    handler = _JsonHandler(out)
    handler.addFilter(_DropDeliberateCloses())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):  # ours from an earlier call, or a basicConfig's
        if type(old) in (_JsonHandler, logging.StreamHandler):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("pynetdicom", "pydicom", "uvicorn", "celery", "py.warnings"):
        named = logging.getLogger(name)
        named.setLevel(logging.WARNING)
        for old in list(named.handlers):  # their own plain-text handlers
            if type(old) is logging.StreamHandler:
                named.removeHandler(old)
        named.propagate = True
    # Python warnings (pydicom's among them) become JSON log records too
    logging.captureWarnings(True)
    # pydicom's read-time value checks quote the value (a patient's name among them) in their
    # warnings: off. The node checks what it relies on itself (UIDs, lengths, structure).
    from pydicom import config as pydicom_config  # noqa: PLC0415

    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    sys.excepthook = _uncaught
    threading.excepthook = _uncaught_in_thread


def _uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    get_logger("uncaught").critical("uncaught_exception", exc_info=(kind, exc, tb))


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None:
        return
    get_logger("uncaught").critical(
        "uncaught_exception",
        thread=args.thread.name if args.thread else None,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
