"""The in-browser page's server: static files and the model, nothing computed.

    server = make_server("exported/model.onnx", port=8000)
    server.serve_forever()

GET /, /<file>   -> files of static/ (the page, and the runtime `install` put in vendor/)
GET /model.onnx  -> the model file given
Anything else is 404 (GET) or 405 (other methods): there is no API, the flow and the animation
are computed by the page. `server.requested` lists the paths asked for, in order.
"""
import os
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer

from cmp_tf.apps.browser import install
from cmp_tf.apps.web import server as web_server

MODEL_PATH = "/model.onnx"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".wasm": "application/wasm", ".onnx": "application/octet-stream"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002  (http.server's signature)
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802  (http.server's name)
        route = self.path.split("?", 1)[0].split("#", 1)[0]
        with self.server.lock:
            self.server.requested.append(route)
        if route == MODEL_PATH:
            path = self.server.model
        else:
            path = web_server.static_path(self.path, root=install.STATIC)
        if path is None:
            message = f"{route} is not served: this page has no server-side API."
            return self._send(HTTPStatus.NOT_FOUND, message.encode(), "text/plain")
        with open(path, "rb") as f:
            body = f.read()
        self._send(HTTPStatus.OK, body, _TYPES.get(os.path.splitext(path)[1],
                                                   "application/octet-stream"))

    def _refuse_method(self):
        with self.server.lock:
            self.server.requested.append(self.path)
        self._send(HTTPStatus.METHOD_NOT_ALLOWED,
                   b"Static files only: the page computes everything itself.", "text/plain")

    do_POST = do_PUT = do_DELETE = _refuse_method  # noqa: N815


def make_server(model, host="127.0.0.1", port=8000, verbose=False):
    """A threading HTTP server for the page and `model` (an exported .onnx file).

    Raises:
        ValueError if `model` is not an .onnx file, or the page's runtime is not installed
        (`python -m cmp_tf.apps.browser.install`).
    """
    model = os.fspath(model) if model is not None else ""
    if not model.endswith(".onnx") or not os.path.isfile(model):
        raise ValueError(f"model={model!r} must be an exported .onnx file (python -m export "
                         "--formats=onnx).")
    if not install.installed():
        raise ValueError(f"The page's runtime (onnxruntime-web {install.ORT_WEB_VERSION}) is "
                         f"not in {install.VENDOR}: run python -m cmp_tf.apps.browser.install.")
    server = ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    server.model, server.verbose = os.path.abspath(model), verbose
    server.requested, server.lock = [], threading.Lock()
    return server
