"""The node's logs (``dicom_node.logs``): one JSON object per line for the node's own events,
the standard library's records and warnings, and uncaught exceptions in any thread; long values
capped; pydicom's value-quoting warnings off; a deliberately closed socket's traceback dropped."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import warnings
from collections.abc import Iterator

import pytest
import structlog
from pydicom import config as pydicom_config

from dicom_node import logs


class Lines(io.StringIO):
    """What the loggers write, read back as JSON objects."""

    def read_lines(self) -> list[dict[str, object]]:
        text, _ = self.getvalue(), self.truncate(0)
        self.seek(0)
        return [json.loads(line) for line in text.splitlines() if line]


@pytest.fixture
def lines() -> Iterator[Lines]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    named = {n: logging.getLogger(n).level for n in ("pynetdicom", "pydicom", "py.warnings")}
    hooks = (sys.excepthook, threading.excepthook)
    validation = pydicom_config.settings.reading_validation_mode
    stream = Lines()
    logs.configure("INFO", stream=stream)
    yield stream
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in named.items():
        logging.getLogger(name).setLevel(old)
    logging.captureWarnings(False)
    sys.excepthook, threading.excepthook = hooks
    pydicom_config.settings.reading_validation_mode = validation


def test_the_nodes_events_are_json_with_their_context(lines: Lines) -> None:
    structlog.contextvars.bind_contextvars(association_id="a-1")
    try:
        logs.get_logger("test").info("c_store_done", sop_instance_uid="1.2.3", status="0x0000")
        logs.get_logger("test").debug("not_at_info")
    finally:
        structlog.contextvars.clear_contextvars()
    (line,) = lines.read_lines()
    assert line["event"] == "c_store_done" and line["level"] == "info"
    assert line["association_id"] == "a-1" and line["sop_instance_uid"] == "1.2.3"
    assert str(line["timestamp"]).endswith("Z")


def test_long_values_are_capped(lines: Lines) -> None:
    logs.get_logger("test").warning("peer_said", error_comment="x" * 10_000)
    (line,) = lines.read_lines()
    assert line["error_comment"] == "x" * logs.MAX_VALUE_CHARS + "… (10000 chars)"


def test_library_records_and_warnings_are_json_too(lines: Lines) -> None:
    logging.getLogger("pynetdicom.assoc").info("association details: PATIENT^NAME")  # below WARNING
    logging.getLogger("pynetdicom.assoc").warning("peer aborted")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("something deprecated", DeprecationWarning, stacklevel=1)
    found = lines.read_lines()
    assert [(x["logger"], x["level"]) for x in found] == [
        ("pynetdicom.assoc", "warning"),
        ("py.warnings", "warning"),
    ]
    assert "something deprecated" in str(found[1]["event"])


def test_pydicom_does_not_quote_values_in_warnings(lines: Lines) -> None:
    assert pydicom_config.settings.reading_validation_mode == pydicom_config.IGNORE
    del lines


def test_a_deliberately_closed_socket_logs_no_traceback(lines: Lines) -> None:
    log = logging.getLogger("pynetdicom.dul")
    for error in (logs.DeliberateCloseError("PDU over the limit"), ValueError("a real bug")):
        try:
            raise error
        except (logs.DeliberateCloseError, ValueError):
            log.error("DUL reactor stopped", exc_info=True)
    deliberate, real = lines.read_lines()
    assert "exception" not in deliberate
    assert "ValueError: a real bug" in str(real["exception"])


def test_an_uncaught_exception_in_a_thread_is_one_critical_line(lines: Lines) -> None:
    def boom() -> None:
        raise RuntimeError("thread died")

    worker = threading.Thread(target=boom, name="sender-3")
    worker.start()
    worker.join()
    (line,) = lines.read_lines()
    assert (line["event"], line["level"], line["thread"]) == (
        "uncaught_exception",
        "critical",
        "sender-3",
    )
    assert "RuntimeError: thread died" in str(line["exception"])


def test_configure_twice_keeps_one_handler(lines: Lines) -> None:
    logs.configure("WARNING", stream=lines)
    logging.getLogger("celery").warning("once")
    logs.get_logger("test").info("below_warning")
    assert [x["event"] for x in lines.read_lines()] == ["once"]
