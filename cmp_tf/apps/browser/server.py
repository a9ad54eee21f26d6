"""The in-browser page's server: static files and the model, nothing computed.

    server = make_server("exported/model.onnx", port=8000)
    server.serve_forever()

GET /, /<file>   -> files of static/ (the page, and the runtime `install` put in vendor/)
GET /model.onnx  -> the model file given
GET /model.json  -> the sides it takes, from its metadata: {"multiple", "minimum", "maximum"}
                    px, and the page's bounds: {"max_pixels", "max_render_pixels"}
Anything else is 404 (GET, HEAD) or 405 (other methods): there is no API, the flow and the
animation are computed by the page. A Host that is not this machine's (a DNS name rebound to
it) is 403. Like the API's server it holds at most max_connections connections, each closed
after request_timeout seconds without a request. `server.requested` lists the paths asked
for, in order (the last MAX_REQUESTED, each cut to MAX_PATH_NOTED characters).
"""
import io
import json
import os
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler

from cmp_tf.apps import animate
from cmp_tf.apps import inputs
from cmp_tf.apps.browser import install
from cmp_tf.apps.web import server as web_server

MODEL_PATH = "/model.onnx"
SIZES_PATH = "/model.json"
MAX_REQUESTED = 10_000  # paths `server.requested` keeps: a client cannot grow it without end
MAX_PATH_NOTED = 256  # characters of a path it keeps
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".wasm": "application/wasm", ".onnx": "application/octet-stream"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        self.timeout = self.server.request_timeout  # each write of an answer, too
        super().setup()
        self.rfile.close()
        self._reader = web_server._DeadlineReader(self.connection, self.server.request_timeout)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self):
        """Each request's line and headers must all arrive within request_timeout seconds of
        the previous answer: a client sending a byte now and then is cut off, not held."""
        self._reader.deadline = time.monotonic() + self.server.request_timeout
        super().handle_one_request()

    def parse_request(self):
        if not super().parse_request():
            return False
        self.connection.settimeout(self.server.request_timeout)  # the answer's writes
        if self.headers.get("Content-Length", "0").strip() != "0" or \
                self.headers.get("Transfer-Encoding") is not None:
            self.close_connection = True  # a body no route reads is never the next request
        return True

    def log_message(self, format, *args):  # noqa: A002  (http.server's signature)
        if self.server.verbose:
            super().log_message(format, *args)

    _send = web_server.Handler._send  # the same headers, and HEAD without a body

    def _note(self, path):
        with self.server.lock:
            requested = self.server.requested
            requested.append(path[:MAX_PATH_NOTED])
            del requested[:max(0, len(requested) - MAX_REQUESTED)]

    def _own_host(self):
        """Whether the Host header names this machine; else a 403 has been sent."""
        host = (self.headers.get("Host") or "").strip().lower()
        if host in self.server.hosts:
            return True
        self.close_connection = True
        self._send(HTTPStatus.FORBIDDEN, f"Host {host!r} is not this server's own.".encode(),
                   "text/plain")
        return False

    def do_GET(self):  # noqa: N802  (http.server's name)
        route = self.path.split("?", 1)[0].split("#", 1)[0]
        self._note(route)
        if not self._own_host():
            return None
        if route == SIZES_PATH:
            return self._send(HTTPStatus.OK, self.server.sizes, "application/json")
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

    do_HEAD = do_GET  # noqa: N815

    def _refuse_method(self):
        self._note(self.path)
        self.close_connection = True  # an unread body is never taken for the next request
        self._send(HTTPStatus.METHOD_NOT_ALLOWED,
                   b"Static files only: the page computes everything itself.", "text/plain",
                   headers=[("Allow", "GET, HEAD")])

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method  # noqa: N815
    do_TRACE = do_CONNECT = _refuse_method  # noqa: N815


def make_server(model, host="127.0.0.1", port=8000, verbose=False,
                request_timeout=web_server.REQUEST_TIMEOUT_S,
                max_connections=web_server.MAX_CONNECTIONS, name="model"):
    """A threading HTTP server for the page and `model` (an exported .onnx file).

    Args:
        name: what `model` is called in errors (the command's flag).
        request_timeout: seconds a connection may wait for its next request, or one read or
            write take; then it is closed.
        max_connections: connections served at once; more are answered 503.

    Raises:
        ValueError if `model` is not an exported CMP .onnx file (ONNX Runtime loads it, it
        takes `image` and `sparse` and holds export's metadata), or the page's runtime is not
        installed (`python -m cmp_tf.apps.browser.install`).
    """
    model = os.fspath(model) if model is not None else ""
    if not model.endswith(".onnx"):
        raise ValueError(f"{name}={model}: the page runs an exported .onnx file (python -m "
                         "export --formats=onnx).")
    # what the page will run: a CMP file with its metadata, which ONNX Runtime loads
    propagator = inputs.load_propagator(model, name, threads=1)
    install.check_installed()
    server = web_server.bounded_server((host, port), _Handler, request_timeout,
                                       max_connections)
    server.model, server.verbose = os.path.abspath(model), verbose
    # the sides the page may feed it, and the image and animation sizes the page renders at
    # most (the animate command's limits)
    server.sizes = json.dumps({"multiple": propagator.multiple, "minimum": propagator.minimum,
                               "maximum": propagator.max_input_side,
                               "max_pixels": animate.MAX_PIXELS,
                               "max_render_pixels": animate.MAX_RENDER_PIXELS}).encode()
    server.requested, server.lock = [], threading.Lock()
    server.hosts = web_server.own_hosts(host, server.server_address[1])
    return server
