"""The admin app inside ``dicom-node serve``: uvicorn in a thread of the supervisor process.

A port that cannot be bound is logged as an error and the node keeps receiving: the UI is for
admins, C-STORE is for the hospital. uvicorn's access log is off (a query string may hold what
an admin typed); the app logs each request itself, path only.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import uvicorn
from sqlalchemy import Engine

from dicom_node.logs import get_logger
from dicom_node.settings import Settings
from dicom_node.web.app import create_app

log = get_logger(__name__)


class AdminServer(threading.Thread):
    def __init__(
        self, settings: Settings, engine: Engine, on_change: Callable[[], None] | None = None
    ) -> None:
        super().__init__(name="dicom-node-admin", daemon=True)
        self.settings = settings
        app = create_app(settings, engine, on_change=on_change)
        config = uvicorn.Config(
            app,
            host=settings.admin.host,
            port=settings.admin.port,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
        self.server = uvicorn.Server(config)

    def run(self) -> None:
        with contextlib.suppress(SystemExit):  # uvicorn exits when it cannot bind
            self.server.run()
        if not self.server.started:
            log.error(
                "admin_ui_not_started",
                host=self.settings.admin.host,
                port=self.settings.admin.port,
                hint="is the port in use? set [admin] port, or [admin] enabled = false",
            )

    def start_and_wait(self, timeout_s: float = 10.0) -> bool:
        self.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.is_alive() and not self.server.started:
            time.sleep(0.05)
        if self.server.started:
            a = self.settings.admin
            log.info("admin_ui_started", url=f"http://{a.host}:{a.port}/")
        return bool(self.server.started)

    def stop(self) -> None:
        self.server.should_exit = True
        self.join(timeout=10)
