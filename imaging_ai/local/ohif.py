"""The OHIF viewer on loopback: its prebuilt npm bundle and Orthanc's DICOMweb on one origin."""

from __future__ import annotations

import base64
import hashlib
import http.client
import shutil
import subprocess
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from imaging_ai.errors import PipelineError
from imaging_ai.http_handler import QuietHandler
from imaging_ai.local.node_packages import cache_root, npm
from imaging_ai.local.orthanc import DICOMWEB_ROOT, Orthanc

# @ohif/app ships its production build in dist/: no webpack run, only the tarball. The
# integrity is the npm registry's for this exact tarball; a different one is refused.
OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"
OHIF_INTEGRITY = (
    "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq"
    "+jd5xXZB9E8EA=="
)
_INSTALLED_MARKER = ".installed"
# Headers that belong to one hop, not to the proxied answer (RFC 9110 section 7.6.1).
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
     "upgrade"}
)  # fmt: skip


class ViewerError(PipelineError):
    """The OHIF viewer could not be installed or served."""


def install_dir() -> Path:
    """Where the OHIF bundle is unpacked: one cache directory per pinned version."""
    return cache_root() / f"ohif-app-{OHIF_VERSION}"


def _integrity(tarball: Path) -> str:
    digest = hashlib.sha512(tarball.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode("ascii")


def ensure_installed(timeout_s: float = 600.0) -> Path:
    """Fetch the pinned @ohif/app tarball with `npm pack` once and unpack its dist/.

    Returns
    -------
    pathlib.Path
        The directory holding OHIF's index.html and bundles.
    """
    target = install_dir()
    dist = target / "dist"
    if (target / _INSTALLED_MARKER).is_file():
        return dist
    npm_path = npm(ViewerError)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        packed = subprocess.run(
            [npm_path, "pack", f"{OHIF_PACKAGE}@{OHIF_VERSION}", "--pack-destination", scratch,
             "--loglevel=error", "--json"],
            cwd=scratch, capture_output=True, text=True, timeout=timeout_s,
        )  # fmt: skip
        if packed.returncode != 0:
            raise ViewerError(f"npm pack {OHIF_PACKAGE}@{OHIF_VERSION} failed: {packed.stderr}")
        tarball = next(Path(scratch).glob("*.tgz"))
        if _integrity(tarball) != OHIF_INTEGRITY:
            raise ViewerError(f"{tarball.name} does not match the pinned integrity")
        unpacked = Path(scratch) / "unpacked"
        with tarfile.open(tarball) as archive:
            archive.extractall(unpacked, filter="data")
        shutil.rmtree(target, ignore_errors=True)
        (unpacked / "package").rename(target)
    (target / _INSTALLED_MARKER).write_text(OHIF_INTEGRITY + "\n")
    return dist


def app_config() -> str:
    """OHIF's app-config.js: one DICOMweb data source, Orthanc behind this same origin."""
    # The origin is read in the browser: the proxy's port is only known once it listens.
    root = DICOMWEB_ROOT.rstrip("/")
    return f"""window.config = {{
  routerBasename: null,
  extensions: [],
  modes: [],
  customizationService: {{}},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {{
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {{
        friendlyName: 'Orthanc (imaging-ai PACS)',
        name: 'orthanc',
        wadoUriRoot: window.location.origin + '{root}',
        qidoRoot: window.location.origin + '{root}',
        wadoRoot: window.location.origin + '{root}',
        qidoSupportsIncludeField: false,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: {{ enabled: true }},
      }},
    }},
  ],
}};
"""


# Quiet: request lines carry study UIDs, and a viewer makes hundreds of them.
class _ViewerHandler(QuietHandler, SimpleHTTPRequestHandler):
    """OHIF's static files, its single-page routes, and DICOMweb passed through to Orthanc.

    GET only (other methods answer 501): nothing can be stored in or deleted from the PACS
    through the viewer's origin.
    """

    orthanc_netloc: str
    config_script: bytes

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith(DICOMWEB_ROOT):
            self._proxy()
        elif path == "/app-config.js":
            self.reply(200, self.config_script, "text/javascript")
        elif path == "/sw.js":
            # No service worker: a cached viewer must never outlive the server it came from.
            self.reply(404, b"no service worker\n", "text/plain")
        elif "." not in path.rsplit("/", 1)[-1]:
            # A viewer route (/viewer?StudyInstanceUIDs=...): the app itself answers it.
            self.path = "/index.html"
            super().do_GET()
        else:
            super().do_GET()

    def _proxy(self) -> None:
        connection = http.client.HTTPConnection(self.orthanc_netloc, timeout=60)
        # Host stays the viewer's: Orthanc builds the BulkDataURIs it returns from it.
        forwarded = {
            name: value for name, value in self.headers.items() if name.lower() not in _HOP_BY_HOP
        }
        try:
            # The request target goes on as the browser encoded it.
            connection.request("GET", self.path, headers=forwarded)
            answer = connection.getresponse()
            body = answer.read()
        except OSError as error:
            self.reply(502, f"Orthanc did not answer: {error}\n".encode(), "text/plain")
            return
        finally:
            connection.close()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@dataclass
class Viewer:
    """OHIF served on `url`, reading studies from one Orthanc through DICOMweb."""

    url: str
    server: ThreadingHTTPServer
    thread: threading.Thread

    def study_url(self, study_instance_uid: str) -> str:
        """The viewer page that opens one study."""
        return f"{self.url}/viewer?StudyInstanceUIDs={study_instance_uid}"

    def stop(self) -> None:
        """Stop serving and wait for the server thread."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def start_viewer(pacs: Orthanc) -> Viewer:
    """Serve OHIF and `pacs`'s DICOMweb (its plugin must be loaded) on a free loopback port.

    Parameters
    ----------
    pacs: imaging_ai.local.orthanc.Orthanc
        The Orthanc whose studies the viewer shows, started with ``dicomweb=True``.

    Returns
    -------
    Viewer
        The running viewer; call `stop()` when done.
    """
    dist = ensure_installed()
    handler = type(
        "ViewerHandler",
        (_ViewerHandler,),
        {"orthanc_netloc": urlsplit(pacs.rest_url).netloc, "config_script": app_config().encode()},
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(dist)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="ohif-viewer", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    return Viewer(url=f"http://{host!s}:{port}", server=server, thread=thread)
