"""The page's server: its own static files, and a JSON API over animate and annotate.

    server = make_server(Propagator(), host="127.0.0.1", port=8000)
    server.serve_forever()

POST /api/animate  {image: base64 PNG/JPEG (a data: URL is fine), arrows: [[x, y, u, v], ...],
                    frames?, fps?}  -> {flow_png, animation_gif, seconds}
POST /api/annotate {image, positive: [[x, y], ...], negative?: [...], refine?}
                   -> {mask_png, overlay_png, seconds}
GET  /api/info     -> the model, the limits and the apps' defaults
GET  /, /<file>    -> files of static/ only

Results are base64 strings. Bad input is a 4xx with {"error": "..."} naming the field: 400 for
what the apps refuse, 411 without a Content-Length, 413 over max_bytes or max_side. Static
paths are resolved and must stay inside static/: nothing else on the disk is served.
"""
import base64
import binascii
import json
import os
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from urllib.parse import unquote

import cv2
import numpy as np

from cmp_tf import flow as flow_lib
from cmp_tf.apps import animate
from cmp_tf.apps import annotate
from cmp_tf.apps import inputs

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_BYTES = 8 * 2**20  # largest request body accepted (the base64 image and the guidance)
MAX_SIDE = 2048  # largest image side accepted, px
MAX_FRAMES = 64  # bounds the work one animation request can ask for
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml",
          ".ico": "image/x-icon"}


class RequestError(ValueError):
    """A request the server refuses, with the HTTP status to answer."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def _path_of(target):
    """The path part of a request target, without query or fragment (never read as a host)."""
    return target.split("?", 1)[0].split("#", 1)[0]


def static_path(url_path, root=STATIC):
    """The file under `root` a URL path names, or None: decoded, normalised, and refused when
    it resolves (symbolic links included) outside `root` or is not a regular file."""
    relative = unquote(_path_of(url_path)).lstrip("/") or "index.html"
    if "\0" in relative:
        return None
    root = os.path.realpath(root)
    path = os.path.realpath(os.path.join(root, relative))
    if os.path.commonpath([root, path]) != root or not os.path.isfile(path):
        return None
    return path


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def _png(image):
    ok, data = cv2.imencode(".png", image if image.ndim == 2 else cv2.cvtColor(
        image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed.")
    return data.tobytes()


def decode_request_image(value, max_side):
    """The request's `image` field (base64, optionally a data: URL) -> uint8 RGB."""
    if not isinstance(value, str) or not value:
        raise RequestError(HTTPStatus.BAD_REQUEST, "image must be a base64 PNG or JPEG string.")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"image is not valid base64 ({error}).") \
            from error
    image = inputs.decode_image(data, "image")
    if max(image.shape[:2]) > max_side:
        raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           f"image is {image.shape[1]}x{image.shape[0]} px; at most {max_side} "
                           "px a side is accepted.")
    return image


class App:
    """What the API does, apart from HTTP: one propagator, used by one request at a time
    (LiteRT interpreters and Keras models are not safe to call from several threads)."""

    def __init__(self, propagator, max_side=MAX_SIDE):
        self.propagator, self.max_side = propagator, max_side
        self._lock = threading.Lock()

    def info(self):
        return {"model": self.propagator.path, "format": self.propagator.format,
                "max_bytes": MAX_BYTES, "max_side": self.max_side, "max_frames": MAX_FRAMES,
                "frames": animate.FRAMES, "fps": animate.FPS, "velocity": annotate.VELOCITY,
                "threshold": annotate.THRESHOLD, "zoom_factor": annotate.ZOOM_FACTOR,
                "refine": annotate.REFINE, "refinements": list(annotate.REFINEMENTS)}

    def animate(self, request):
        image = decode_request_image(request.get("image"), self.max_side)
        arrows = inputs.parse_rows(request.get("arrows"), inputs.ARROW_FIELDS, "arrows")
        inputs.check_inside(arrows, *image.shape[:2], name="arrows")
        frames = request.get("frames", animate.FRAMES)
        if isinstance(frames, bool) or not isinstance(frames, int) or \
                not 2 <= frames <= MAX_FRAMES:
            raise ValueError(f"frames must be an integer in [2, {MAX_FRAMES}]; got {frames!r}.")
        fps = inputs.positive(request.get("fps", animate.FPS), "fps")
        with self._lock:
            flow = animate.predict_flow(self.propagator, image, arrows)
        frames = animate.animate_frames(image, flow, frames)
        return {"flow_png": _b64(_png(flow_lib.flow_to_color(flow))),
                "animation_gif": _b64(animate.encode_gif(frames, fps))}

    def annotate(self, request):
        image = decode_request_image(request.get("image"), self.max_side)
        positive = inputs.parse_rows(request.get("positive"), inputs.CLICK_FIELDS, "positive")
        negative = inputs.parse_rows(request.get("negative"), inputs.CLICK_FIELDS, "negative",
                                     allow_empty=True)
        refine = request.get("refine", annotate.REFINE)
        annotate.check_refinement(annotate.THRESHOLD, refine)
        annotate.check_clicks(image, positive, negative)
        with self._lock:
            score = annotate.motion_score(self.propagator, image, positive, negative)
        mask = annotate.refine(image, score, positive, negative, method=refine)
        return {"mask_png": _b64(_png(mask.astype(np.uint8) * 255)),
                "overlay_png": _b64(_png(annotate.overlay(image, mask))),
                "share": float(mask.mean())}


class Handler(BaseHTTPRequestHandler):
    """HTTP around App; `server.app` is the App."""

    server_version = "cmp_tf"
    routes = {"/api/animate": "animate", "/api/annotate": "annotate"}

    def log_message(self, format, *args):  # noqa: A002  (the base class's signature)
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    def _send(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status, value):
        self._send(status, json.dumps(value).encode(), "application/json")

    def do_GET(self):  # noqa: N802  (http.server's name)
        if _path_of(self.path) == "/api/info":
            return self._json(HTTPStatus.OK, self.server.app.info())
        path = static_path(self.path)
        if path is None:
            return self._json(HTTPStatus.NOT_FOUND, {"error": f"{self.path} is not served."})
        with open(path, "rb") as f:
            body = f.read()
        self._send(HTTPStatus.OK, body, _TYPES.get(os.path.splitext(path)[1],
                                                   "application/octet-stream"))

    def do_POST(self):  # noqa: N802
        route = self.routes.get(_path_of(self.path))
        try:
            if route is None:
                raise RequestError(HTTPStatus.NOT_FOUND, f"{self.path} is not an API route; "
                                   f"POST to {', '.join(self.routes)}.")
            request = self._read_json()
            start = time.perf_counter()
            result = getattr(self.server.app, route)(request)
            result["seconds"] = time.perf_counter() - start
            self._json(HTTPStatus.OK, result)
        except RequestError as error:
            self._json(error.status, {"error": str(error)})
        except ValueError as error:  # what the apps refuse, naming the field
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(error)})

    def _read_json(self):
        length = self.headers.get("Content-Length")
        if length is None:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "a Content-Length is required.")
        try:
            length = int(length)
        except ValueError as error:
            raise RequestError(HTTPStatus.BAD_REQUEST, "Content-Length is not a number.") \
                from error
        if length > self.server.max_bytes:
            self.close_connection = True  # the body is not read
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"the request is {length} bytes; at most "
                               f"{self.server.max_bytes} are accepted.")
        try:
            request = json.loads(self.rfile.read(length))
        except ValueError as error:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"the body is not JSON ({error}).") \
                from error
        if not isinstance(request, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object.")
        return request


def make_server(propagator, host="127.0.0.1", port=8000, max_bytes=MAX_BYTES,
                max_side=MAX_SIDE, verbose=False):
    """A ThreadingHTTPServer (not started) serving the page and the API; port 0: a free one
    (read it from server.server_address)."""
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    server.app, server.max_bytes, server.verbose = App(propagator, max_side), max_bytes, verbose
    return server
