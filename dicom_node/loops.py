"""The node's background loops (sweeper, dispatcher, senders, watch, heartbeat) and the one guard
they share: a step that fails is logged with its traceback and the loop goes on, because one
bad row or one dead peer must not stop receiving, dispatching or sending for everyone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from dicom_node.logs import get_logger

log = get_logger(__name__)


def guarded(step: Callable[[], object], event: str, **fields: Any) -> object:
    """``step()``; if it raises, log ``event`` with the traceback and return ``None``."""
    try:
        return step()
    except Exception:
        log.exception(event, **fields)
        return None


class Loop(threading.Thread):
    """A daemon thread that runs ``step`` every ``interval_s`` until ``stop()``.

    A step that returns ``True`` had more to do: the next one runs at once. ``wake()`` cuts the
    wait short. With ``wait_first`` the first step waits one interval.
    """

    def __init__(
        self,
        name: str,
        step: Callable[[], object],
        interval_s: float,
        *,
        event: str,
        wait_first: bool = False,
        **fields: Any,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.step = step
        self.interval_s = interval_s
        self.event = event
        self.wait_first = wait_first
        self.fields = fields
        self.halted = threading.Event()
        self._wake = threading.Event()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self.halted.set()
        self._wake.set()

    def run(self) -> None:
        if self.wait_first:
            self._pause()
        while not self.halted.is_set():
            if guarded(self.step, self.event, **self.fields) is not True:
                self._pause()

    def _pause(self) -> None:
        self._wake.wait(self.interval_s)
        self._wake.clear()
