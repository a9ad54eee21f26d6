"""The page's server: its own static files, and a JSON API over animate and annotate.

    server = make_server(Propagator(), host="127.0.0.1", port=8000)
    server.serve_forever()

POST /api/animate  {image: base64 PNG/JPEG (a data: URL is fine), arrows: [[x, y, u, v], ...],
                    frames?, fps?}  -> {flow_png, animation_gif, seconds}
POST /api/annotate {image, positive: [[x, y], ...], negative?: [...], refine?}
                   -> {mask_png, overlay_png, share (of the image in the mask), seconds}
GET  /api/info     -> the model, the limits and the apps' defaults
GET  /, /<file>    -> files of static/ only

Results are base64 strings. Bad input is a 4xx with {"error": "..."} naming the field or the
header: 400 for what the apps refuse, 403 for a Host or Origin that is not this server's own (a
page on another site, or a DNS name rebound to 127.0.0.1, cannot use the API), 408 for a request
that does not arrive within request_timeout seconds, 411 without a valid Content-Length (it is
read before any of the body), 413 over max_bytes, max_side (read from the image's header,
before decoding) or the animation's MAX_RENDER_PIXELS, 415 for a body not sent as
application/json; 503 when max_connections are open already. Static paths are resolved and
must stay inside static/: nothing else on the disk is served.

What one server can hold is bounded: max_connections connection threads, each for at most
request_timeout seconds of reading (an idle or trickling client is cut off) and max_bytes of
body (after a refusal, LINGER_S more of reading and dropping the rest, so the client gets the
answer), as many again lingering after a 503; WORKERS requests decode and render at once,
each within max_side and MAX_RENDER_PIXELS (the largest animation, 8 frames of 2048x2048 with
the network at 512 px, holds ~0.75 GB while it renders).
"""
import base64
import binascii
import io
import ipaddress
import json
import os
import re
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from urllib.parse import unquote

import cv2
import numpy as np

from cmp_tf import flow as flow_lib
from cmp_tf import runtime
from cmp_tf.apps import animate
from cmp_tf.apps import annotate
from cmp_tf.apps import inputs

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_BYTES = 8 * 2**20  # largest request body accepted (the base64 image and the guidance)
MAX_SIDE = 2048  # largest image side accepted, px
MAX_FRAMES = 64  # bounds the work one animation request can ask for
MAX_GUIDES = 1024  # arrows, or clicks of each kind, one request may give: they are read before
#   a worker is taken, and a million took 15 s of a core
REQUEST_TIMEOUT_S = 30.0  # a request's line, headers and body must all arrive within it
MAX_CONNECTIONS = 32  # open connections (one thread each); more are answered 503 at once
WORKERS = 2  # requests decoding and rendering at once: the memory they hold is bounded
LINGER_S = 2.0  # after a refusal, how long the unread rest of a body is read and dropped
ALLOWED_METHODS = "GET, HEAD, POST"  # what a 405 names in its Allow header
BACKLOG = 64  # connections the kernel queues until they are accepted (the default 5 overflows
#   under a burst, and each overflow costs its client a 1 s SYN retry)
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")  # names of this machine always accepted
_WILDCARDS = ("", "0.0.0.0", "::")
_ECHOED, _ECHOED_ITEMS = 100, 5  # characters of a client's text, and its items, an error repeats
_LENGTH = re.compile(r"[0-9]{1,18}")  # a Content-Length: digits only (no sign, space or _)
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
    if "\0" in relative or relative.endswith(("/", "\\")):  # a folder's URL names no file
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


def request_image(value, max_side):
    """The request's `image` field (base64, optionally a data: URL) -> (encoded bytes,
    (width, height)): the size read from the header and refused (413) before any decoding."""
    if not isinstance(value, str) or not value:
        raise RequestError(HTTPStatus.BAD_REQUEST, "image must be a base64 PNG or JPEG string.")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"image is not valid base64 ({error}).") \
            from error
    width, height = inputs.image_size(data, "image")
    if max(width, height) > max_side:
        raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           f"image is {width}x{height} px; at most {max_side} px a side is "
                           "accepted (the size is read from the image's header; nothing was "
                           "decoded).")
    return data, (width, height)


ANIMATE_FIELDS = ("image", "arrows", "frames", "fps")
ANNOTATE_FIELDS = ("image", "positive", "negative", "refine")


def check_fields(request, fields, route):
    """Refuses a field the route does not read: a mistyped or unsupported one would otherwise
    be ignored and the answer made with the defaults."""
    unknown = sorted(set(request) - set(fields))
    if unknown:
        listed = ", ".join(runtime.short_repr(name, _ECHOED) for name in unknown[:_ECHOED_ITEMS])
        raise ValueError(f"{listed}: not a field of {route}; its fields "
                         f"are {', '.join(fields)}.")
    return request


def _shaped(size):
    """A stand-in of an image's shape (height, width) that holds no pixels, for the checks
    that need only the size."""
    return np.broadcast_to(np.uint8(0), (size[1], size[0]))


class App:
    """What the API does, apart from HTTP: one propagator, used by one request at a time
    (LiteRT interpreters and Keras models are not safe to call from several threads), and
    `workers` requests decoding and rendering at once. Everything checkable from the request
    and the image's header is checked first, without waiting for a worker."""

    def __init__(self, propagator, max_side=MAX_SIDE,
                 max_render_pixels=animate.MAX_RENDER_PIXELS, workers=WORKERS,
                 max_bytes=MAX_BYTES):
        self.propagator, self.max_side, self.max_bytes = propagator, max_side, max_bytes
        self.max_render_pixels = max_render_pixels
        self._lock = threading.Lock()
        self._workers = threading.BoundedSemaphore(workers)

    def info(self):
        return {"model": self.propagator.path, "format": self.propagator.format,
                "max_bytes": self.max_bytes, "max_side": self.max_side, "max_frames": MAX_FRAMES,
                "max_render_pixels": self.max_render_pixels, "max_guides": MAX_GUIDES,
                "frames": animate.FRAMES, "fps": animate.FPS, "velocity": annotate.VELOCITY,
                "threshold": annotate.THRESHOLD, "zoom_factor": annotate.ZOOM_FACTOR,
                "refine": annotate.REFINE, "refinements": list(annotate.REFINEMENTS)}

    def animate(self, request):
        check_fields(request, ANIMATE_FIELDS, "/api/animate")
        data, size = request_image(request.get("image"), self.max_side)
        arrows = inputs.parse_rows(request.get("arrows"), inputs.ARROW_FIELDS, "arrows",
                                   max_items=MAX_GUIDES)
        inputs.check_inside(arrows, size[1], size[0], name="arrows")
        frames = request.get("frames", animate.FRAMES)
        if isinstance(frames, bool) or not isinstance(frames, int) or \
                not 2 <= frames <= MAX_FRAMES:
            raise ValueError(f"frames must be an integer in [2, {MAX_FRAMES}]; got {frames!r}.")
        fps = animate.check_fps(request.get("fps", animate.FPS), "fps", ".gif")
        try:  # before decoding: the frames are rendered at the image's size
            animate.check_render(*size, frames, self.max_render_pixels)
        except ValueError as error:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(error)) from error
        with self._workers:
            image = inputs.decode_image(data, "image", max_side=self.max_side)
            with self._lock:
                flow = animate.predict_flow(self.propagator, image, arrows)
            frames = animate.animate_frames(image, flow, frames, self.max_render_pixels)
            return {"flow_png": _b64(_png(flow_lib.flow_to_color(flow))),
                    "animation_gif": _b64(animate.encode_gif(frames, fps))}

    def annotate(self, request):
        check_fields(request, ANNOTATE_FIELDS, "/api/annotate")
        data, size = request_image(request.get("image"), self.max_side)
        positive = inputs.parse_rows(request.get("positive"), inputs.CLICK_FIELDS, "positive",
                                     max_items=MAX_GUIDES)
        negative = inputs.parse_rows(request.get("negative"), inputs.CLICK_FIELDS, "negative",
                                     allow_empty=True, max_items=MAX_GUIDES)
        refine = request.get("refine", annotate.REFINE)
        annotate.check_refinement(annotate.THRESHOLD, refine)
        annotate.check_clicks(_shaped(size), positive, negative)
        with self._workers:
            image = inputs.decode_image(data, "image", max_side=self.max_side)
            with self._lock:
                score = annotate.motion_score(self.propagator, image, positive, negative)
            mask = annotate.refine(image, score, positive, negative, method=refine)
            return {"mask_png": _b64(_png(mask.astype(np.uint8) * 255)),
                    "overlay_png": _b64(_png(annotate.overlay(image, mask))),
                    "share": float(mask.mean())}


class _DeadlineReader(io.RawIOBase):
    """A connection's reads, all of them within `seconds` of its start: each recv waits at most
    the time left, so a client that sends nothing, or a byte now and then, is cut off."""

    def __init__(self, connection, seconds):
        super().__init__()
        self.connection, self.deadline = connection, time.monotonic() + seconds

    def readable(self):
        return True

    def readinto(self, buffer):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self.connection.settimeout(left)
        return self.connection.recv_into(buffer)


class OwnHosts:
    """The Host header values a server answers to (`value in hosts`): this machine's local
    names and the address it is bound to (for a wildcard, the machine's name and addresses),
    with its port. Bound to every interface, any IP address with the port is its own too: a
    page shared on the network is reached by the machine's address, which a Host of digits
    names, and no DNS name can be rebound to it."""

    def __init__(self, host, port, extra=()):
        names = set(LOCAL_HOSTS) | {name.lower() for name in extra}
        self.port, self.any_address = port, host in _WILDCARDS
        if self.any_address:
            try:
                names.add(socket.gethostname().lower())
                names.update(info[4][0]
                             for info in socket.getaddrinfo(socket.gethostname(), None))
            except OSError:  # no resolvable name: local names only
                pass
        else:
            names.add(host.lower())
        names = {f"[{name}]" if ":" in name and not name.startswith("[") else name
                 for name in names}
        self.values = {f"{name}:{port}" for name in names} | (names if port == 80 else set())

    def __contains__(self, value):
        value = value.strip().lower()
        if value in self.values:
            return True
        if not self.any_address:
            return False
        name, _, port = value.rpartition(":")
        if not name or port != str(self.port):
            name, port = value, ""  # no port: the default one only
            if self.port != 80:
                return False
        try:
            ipaddress.ip_address(name[1:-1] if name.startswith("[") and name.endswith("]")
                                 else name)
        except ValueError:
            return False
        return ":" not in name or name.startswith("[")  # an IPv6 address is written in []

    def __iter__(self):
        return iter(sorted(self.values))

    def describe(self):
        """The accepted values, for an error."""
        listed = ", ".join(self)
        return listed + (", or an IP address with the port" if self.any_address else "")


def own_hosts(host, port, extra=()):
    """OwnHosts of a server bound to `host`:`port`, accepting `extra` names as well."""
    return OwnHosts(host, port, extra)


class Handler(BaseHTTPRequestHandler):
    """HTTP around App; `server.app` is the App."""

    server_version = "cmp_tf"
    routes = {"/api/animate": "animate", "/api/annotate": "annotate"}

    def setup(self):
        self.timeout = self.server.request_timeout  # every write, too
        super().setup()
        self.rfile.close()
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection,
                                                       self.server.request_timeout))

    def log_message(self, format, *args):  # noqa: A002  (the base class's signature)
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    def _send(self, status, body, content_type, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":  # HEAD: GET's headers, no body
            self.wfile.write(body)

    def _json(self, status, value, headers=()):
        self._send(status, json.dumps(value).encode(), "application/json", headers)

    def _check_host_and_origin(self):
        """Refuses (403) a Host that is not this server's own and a foreign Origin: another
        site's page (CSRF) or a DNS name rebound to this machine never reaches the API."""
        hosts = self.server.hosts
        host = self.headers.get("Host")
        if host is None:
            raise RequestError(HTTPStatus.BAD_REQUEST, "a Host header is required.")
        if host not in hosts:
            raise RequestError(HTTPStatus.FORBIDDEN,
                               f"Host {host!r} is not this server's own; accepted: "
                               f"{hosts.describe()}.")
        origin = self.headers.get("Origin")
        scheme, _, origin_host = (origin or "").strip().lower().partition("://")
        if origin is not None and (scheme != "http" or origin_host not in hosts):
            raise RequestError(HTTPStatus.FORBIDDEN,
                               f"Origin {origin!r} is not this server's own page; the API "
                               "answers its own page only.")

    def _refuse(self, error):
        self.close_connection = True  # whatever was not read of the body is not read
        self._linger = self.command == "POST"
        self._json(error.status, {"error": str(error)})

    def finish(self):
        """After a refusal the rest of the body is read and dropped before the socket closes
        (`linger`)."""
        super().finish()
        if getattr(self, "_linger", False):
            linger(self.connection)

    def do_GET(self):  # noqa: N802  (http.server's name)
        try:
            self._check_host_and_origin()
        except RequestError as error:
            return self._refuse(error)
        if _path_of(self.path) == "/api/info":
            return self._json(HTTPStatus.OK, self.server.app.info())
        path = static_path(self.path)
        if path is None:
            echoed = runtime.short_text(self.path, _ECHOED)
            return self._json(HTTPStatus.NOT_FOUND, {"error": f"{echoed} is not served."})
        with open(path, "rb") as f:
            body = f.read()
        self._send(HTTPStatus.OK, body, _TYPES.get(os.path.splitext(path)[1],
                                                   "application/octet-stream"))

    def do_HEAD(self):  # noqa: N802  (GET's answer without its body)
        self.do_GET()

    def _method_not_allowed(self):
        """405 in JSON, naming the methods there are; the connection closes after it, its
        body (if any) read and dropped as after any refusal."""
        self.close_connection, self._linger = True, True
        self._json(HTTPStatus.METHOD_NOT_ALLOWED,
                   {"error": f"{self.command} is not served; {ALLOWED_METHODS} are."},
                   headers=[("Allow", ALLOWED_METHODS)])

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (a request line or headers too long, a method it does
        not know, which is a 405 as any other) in JSON, as every other answer."""
        if code == HTTPStatus.NOT_IMPLEMENTED:
            return self._method_not_allowed()
        self.close_connection = True
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = ""
        return self._json(code, {"error": message or phrase})

    do_PUT = do_DELETE = do_PATCH = _method_not_allowed  # noqa: N815
    do_OPTIONS = do_TRACE = do_CONNECT = _method_not_allowed  # noqa: N815

    def do_POST(self):  # noqa: N802
        route = self.routes.get(_path_of(self.path))
        try:
            if route is None:
                raise RequestError(HTTPStatus.NOT_FOUND,
                                   f"{runtime.short_text(self.path, _ECHOED)} is not an API "
                                   f"route; POST to {', '.join(self.routes)}.")
            self._check_host_and_origin()
            request = self._read_json()
            start = time.perf_counter()
            result = getattr(self.server.app, route)(request)
            result["seconds"] = time.perf_counter() - start
            self._json(HTTPStatus.OK, result)
        except RequestError as error:
            self._refuse(error)
        except ValueError as error:  # what the apps refuse, naming the field
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(error)})
        except (ConnectionError, TimeoutError):
            raise  # the client went away: nothing to answer
        except Exception as error:  # noqa: BLE001  (a failure is answered, not a dropped line)
            self.log_error("%s failed: %r", self.path, error)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR,
                       {"error": f"the server failed: {type(error).__name__}: {error}"})

    def _content_length(self):
        """The body's length from its one Content-Length, refused before anything is read."""
        if self.headers.get("Transfer-Encoding") is not None:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "Transfer-Encoding is not accepted; "
                               "send the body with a Content-Length.")
        values = self.headers.get_all("Content-Length") or []
        if not values:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "a Content-Length is required.")
        if len(values) > 1 or not _LENGTH.fullmatch(values[0].strip()):
            shown = values[0] if len(values) == 1 else values
            raise RequestError(HTTPStatus.BAD_REQUEST, "Content-Length must be one "
                               f"non-negative integer, the body's size in bytes; got {shown!r}.")
        length = int(values[0])
        if length > self.server.max_bytes:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"the request is {length} bytes (Content-Length); at most "
                               f"{self.server.max_bytes} are accepted.")
        return length

    def _read_json(self):
        length = self._content_length()
        content_type = self.headers.get("Content-Type", "")
        if content_type.split(";", 1)[0].strip().lower() != "application/json":
            raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "Content-Type must be "
                               f"application/json; got {content_type or 'none'!r}.")
        try:
            body = self.rfile.read(length)
        except TimeoutError as error:
            raise RequestError(HTTPStatus.REQUEST_TIMEOUT, f"the body did not arrive within "
                               f"{self.server.request_timeout:g} s.") from error
        if len(body) != length:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"the body ended after {len(body)} of "
                               f"the {length} bytes its Content-Length says.")
        self.connection.settimeout(self.server.request_timeout)  # the answer's writes
        try:
            request = json.loads(body)
        except (ValueError, RecursionError) as error:  # nested past Python's recursion limit
            raise RequestError(HTTPStatus.BAD_REQUEST, f"the body is not JSON ({error}).") \
                from error
        if not isinstance(request, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object.")
        return request


def linger(connection, seconds=LINGER_S):
    """Reads and drops what a client still sends, for at most `seconds`, after its answer:
    closing a socket on unread bytes resets the connection, and a client still sending its
    body (a photo over the size limit, a request over the connection limit) would see a
    broken connection instead of the answer waiting for it."""
    try:
        connection.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            connection.settimeout(max(deadline - time.monotonic(), 0.001))
            if not connection.recv(65536):
                break
    except OSError:  # the client closed, reset or was slow: nothing more to do
        pass


class Server(ThreadingHTTPServer):
    """ThreadingHTTPServer with a bound on its connection threads (over it: 503 at once, and
    at most as many threads again lingering to drop those requests' bodies) and quiet about
    clients that go away."""

    daemon_threads = True
    request_queue_size = BACKLOG
    _BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
             b"Connection: close\r\nRetry-After: 1\r\nContent-Length: %d\r\n\r\n%s")

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            body = json.dumps({"error": f"the server has {self.max_connections} connections "
                               "open already; retry shortly."}).encode()
            try:
                request.settimeout(1.0)
                request.sendall(self._BUSY % (len(body), body))
            except OSError:
                pass
            if self.lingering.acquire(blocking=False):
                threading.Thread(target=self._linger_then_close, args=(request,),
                                 daemon=True).start()
            else:  # as many lingering already: closed at once
                self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def _linger_then_close(self, request):
        try:
            linger(request)
        finally:
            self.shutdown_request(request)
            self.lingering.release()

    def process_request_thread(self, request, client_address):
        # socketserver.ThreadingMixIn's, with the slot freed before the connection is closed:
        # freed after, a client that saw the close and connected again could be refused.
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.slots.release()
            self.shutdown_request(request)

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def serve(server, what):
    """Serves until Ctrl-C, saying where (`what`: what is served), then closes the socket."""
    host, port = server.server_address[:2]
    print(f"Serving {what} on http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def make_server(propagator, host="127.0.0.1", port=8000, max_bytes=MAX_BYTES,
                max_side=MAX_SIDE, verbose=False, request_timeout=REQUEST_TIMEOUT_S,
                max_connections=MAX_CONNECTIONS, max_render_pixels=animate.MAX_RENDER_PIXELS,
                hosts=()):
    """A threading HTTP server (not started) serving the page and the API; port 0: a free one
    (read it from server.server_address).

    Args:
        request_timeout: seconds a request may take to arrive, and each write of its answer.
        max_connections: connections served at once; more are answered 503.
        max_render_pixels: frames x width x height of one animation.
        hosts: further names the Host header may give (with the port), beyond this machine's
            local names and the bound address.
    """
    check_limits(max_bytes=max_bytes, max_render_pixels=max_render_pixels)
    server = bounded_server((host, port), Handler, request_timeout, max_connections)
    server.app = App(propagator, max_side, max_render_pixels, max_bytes=max_bytes)
    server.max_bytes, server.verbose = max_bytes, verbose
    server.hosts = own_hosts(host, server.server_address[1], hosts)
    return server


def bind(server_class, address, handler):
    """`server_class(address, handler)`, an address it cannot listen on (a port out of range or
    taken, a host name that does not resolve) a ValueError naming --host and --port."""
    host, port = address
    if not isinstance(host, str) or not host.strip():  # the socket's "every interface"
        raise ValueError(f"--host={host!r} names no address, which would open the page to "
                         "every machine that reaches this one: give 127.0.0.1 (this machine "
                         "only) or, to share it, 0.0.0.0.")
    if ":" in host:  # an IPv6 address (::1, ::): the class's IPv4 socket cannot take it
        server_class = type(server_class.__name__, (server_class,),
                            {"address_family": socket.AF_INET6})
    try:
        return server_class(address, handler)
    except (OSError, OverflowError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ValueError(f"--host={host} --port={port}: cannot listen there ({reason}).") \
            from error


def check_limits(**limits):
    """Raises ValueError naming the first of `limits` (name=value) that is not a positive
    number (`inputs.positive`)."""
    for name, value in limits.items():
        inputs.positive(value, name)


def bounded_server(address, handler, request_timeout, max_connections):
    """A `Server` for `handler` holding at most `max_connections` connections, each cut off
    after `request_timeout` seconds without progress (the handler reads
    `server.request_timeout`)."""
    check_limits(request_timeout=request_timeout, max_connections=max_connections)
    server = bind(Server, address, handler)
    server.request_timeout, server.max_connections = float(request_timeout), max_connections
    server.slots = threading.BoundedSemaphore(max_connections)
    server.lingering = threading.BoundedSemaphore(max_connections)
    return server
