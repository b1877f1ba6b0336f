"""Real viewers for the viewer suite: OHIF v3 (the prebuilt ``@ohif/app`` from npm) in Debian's
headless Chromium, over Orthanc's DICOMweb plugin.

OHIF is served the way PITFALLS 28 says it must be: the built ``dist/`` with an SPA fallback, a
same-origin reverse proxy to Orthanc's ``/dicom-web`` and ``/wado`` (the Host header forwarded, so
BulkDataURIs point back through the proxy), cross-origin isolation headers (cornerstone3D needs
SharedArrayBuffer) and an ``app-config.js`` with one DICOMweb data source on the proxy. The npm
tarball is fetched once into a cache and checked against its pinned sha256.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import mimetypes
import os
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.helpers import free_port

OHIF_VERSION = "3.13.2"
OHIF_SHA256 = "b189d3963bfc58e9394a9db8c7be75d07beb029ec211dbb126d47b62969dd3f1"
CACHE = Path(os.environ.get("DICOM_NODE_CACHE", Path.home() / ".cache" / "dicom-node"))
PROXIED = ("/dicom-web", "/wado")
ISOLATION = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}

APP_CONFIG = """window.config = {
  routerBasename: null,
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: false,
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc (test)',
        name: 'orthanc',
        wadoUriRoot: '/wado',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
"""


class ViewerMissingError(Exception):
    """A part the viewer suite needs is not on this machine; the message says which."""


def ohif_dist() -> Path:
    """The built OHIF app: from the cache, else ``npm pack`` of the pinned version, checked."""
    folder = CACHE / "ohif" / OHIF_VERSION
    dist = folder / "package" / "dist"
    if (dist / "index.html").is_file():
        return dist
    npm = shutil.which("npm")
    if npm is None:
        raise ViewerMissingError("npm not found: it fetches the prebuilt OHIF (@ohif/app) once")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "pack", f"@ohif/app@{OHIF_VERSION}", "--silent", "--pack-destination", str(folder)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    tarball = folder / f"ohif-app-{OHIF_VERSION}.tgz"
    if done.returncode != 0 or not tarball.is_file():
        raise ViewerMissingError(f"npm pack @ohif/app@{OHIF_VERSION} failed: {done.stderr[-400:]}")
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if digest != OHIF_SHA256:
        tarball.unlink()
        raise AssertionError(f"@ohif/app {OHIF_VERSION}: sha256 {digest}, pinned {OHIF_SHA256}")
    with tarfile.open(tarball) as tar:
        tar.extractall(folder, filter="data")
    return dist


class _Handler(BaseHTTPRequestHandler):
    dist: Path
    upstream: int
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in {**headers, **ISOLATION}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _proxy(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        conn.request(self.command, self.path, body=body, headers=headers)
        rsp = conn.getresponse()
        data = rsp.read()
        kept = {
            k: v
            for k, v in rsp.getheaders()
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"
        }
        conn.close()
        self._send(rsp.status, kept, data)

    def _static(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/app-config.js":
            self._send(200, {"Content-Type": "text/javascript"}, APP_CONFIG.encode())
            return
        file = (self.dist / path.lstrip("/")).resolve()
        if not file.is_relative_to(self.dist.resolve()) or not file.is_file():
            file = self.dist / "index.html"  # the app's own routes: /viewer, /segmentation ...
        kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if file.suffix == ".wasm":
            kind = "application/wasm"
        self._send(200, {"Content-Type": kind}, file.read_bytes())

    def do_GET(self) -> None:
        if self.path.startswith(PROXIED):
            self._proxy()
        else:
            self._static()

    def do_POST(self) -> None:
        self._proxy()


@contextmanager
def ohif_server(dist: Path, orthanc_http_port: int) -> Iterator[str]:
    """OHIF on loopback, proxying DICOMweb to Orthanc; yields its base URL."""
    handler = type("Handler", (_Handler,), {"dist": dist, "upstream": orthanc_http_port})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def dicomweb_config() -> dict[str, Any]:
    """Orthanc's DICOMweb plugin, with full metadata (SEG and SR need it: PITFALLS 28)."""
    return {
        "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "WadoRoot": "/wado",
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        },
    }


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def headless_chromium(window: str, *extra: str, page_load_s: int = 30) -> Any:
    """Debian's Chromium through Debian's chromedriver (nothing downloaded), headless, with the
    page's console log kept; skipped (failed under CI) when either is missing."""
    import pytest  # noqa: PLC0415
    from selenium import webdriver  # noqa: PLC0415
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            missing = f"{path} not found: apt-get install chromium chromium-driver"
            if os.environ.get("CI"):
                pytest.fail(f"CI must not skip the browser tests: {missing}")
            pytest.skip(missing)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", window, *extra):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(page_load_s)
    return driver


def browser_log(driver: Any) -> list[str]:
    """The page's console messages (Chromium's browser log)."""
    return [json.dumps(e) for e in driver.get_log("browser")]
