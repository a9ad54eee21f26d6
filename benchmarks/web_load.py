r"""A bounded load test of the page's server on this machine (127.0.0.1 only): concurrent
requests of every kind, good and hostile, for a fixed time; does the server answer each as it
should, stay up, and stay under a stated memory bound?

  python benchmarks/web_load.py [--duration=30] [--clients=16] [--model=PATH] [--out=DIR]

The server runs in its own process (this file with --serve, on a free port), so its memory is
its own: the peak resident size is the kernel's high-water mark, /proc/<pid>/status VmHWM.
--clients threads each send one request at a time, the next kind in one turn shared by all
threads, until --duration has passed and each kind has been sent once; requests under way
then finish. Kinds, and the answer
each must get:
  info, page           GET /api/info, GET /                                        200
  animate, annotate    a --side px image with arrows / clicks                        200
  huge_image           a 0.4 MB PNG of 20000x20000 (refused from its header)         413
  long_animation       a max_side image asking for max_frames frames (render bound)  413
  oversized_body       a Content-Length over max_bytes, no body sent                 413
  negative_length      Content-Length: -1, the connection left open                  400
  wrong_type           the JSON sent as text/plain                                   415
  foreign_origin       Origin: http://evil.example                                   403
  foreign_host         Host: rebound.example:<port> (DNS rebinding)                  403
  half_sent            a tenth of the body, then silence                             408
  idle                 a connection that sends nothing                     closed, no answer
Prints a table (requests, answers by status, latency) and writes web_load.json and a plot
of it, web_load.png, to --out.
Exits 1 when the server went down, answered a kind otherwise than it should, or passed
MEMORY_BOUND_MB (--memory_bound_mb).
"""
import base64
import json
import math
import os
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib

import cv2
import numpy as np
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import reference as reference_lib  # noqa: E402
from cmp_tf import cli  # noqa: E402
from cmp_tf.apps import animate  # noqa: E402
from cmp_tf.apps.web import server as server_lib  # noqa: E402

_DURATION = flags.DEFINE_float("duration", 30.0, "Seconds of load (new requests stop then).")
_CLIENTS = flags.DEFINE_integer("clients", 16, "Client threads, one request each at a time.",
                                lower_bound=1)
_MODEL = flags.DEFINE_string("model", None, "Model the server loads; default the model that "
                             "ships with cmp_tf.")
_SIDE = flags.DEFINE_integer("side", 128, "Side of the images the good requests send, px "
                             "(from MIN_SIDE to the server's largest).")
_REQUEST_TIMEOUT = flags.DEFINE_float("request_timeout", 5.0, "The server's request_timeout, s "
                                      "(shorter than its default so that the idle and half-sent "
                                      "kinds come round several times in a run).")
_MEMORY_BOUND = flags.DEFINE_integer("memory_bound_mb", None, "The server's peak RSS allowed, "
                                     "MB; default MEMORY_BOUND_MB.")
_OUT = cli.define_output("out", "runs/benchmarks", "Folder for web_load.json and .png.")
_SERVE = flags.DEFINE_boolean("serve", False, "Internal: be the server (prints its port).")

HOST = "127.0.0.1"  # never anything else: the load stays on this machine
MEMORY_BOUND_MB = 2048  # the server's peak RSS under this load: TensorFlow and the model
#   (0.7 GB; 1.1 GB once annotation has run), request threads and small renders (1.45 GB
#   measured). An animation at the largest size the page takes (2048x2048, 8 frames) holds
#   0.75 GB more while it renders, times the server's WORKERS: raise --memory_bound_mb with --side
CLIENT_WAIT_S = 120.0  # longest a client waits for an answer before calling the server hung
START_WAIT_S = 300.0  # longest the server may take to load TensorFlow and the model
SAMPLE_S = 0.2  # how often the server's threads and memory are read
PIN = 2  # x = y of the good requests' pinned point (animate) and negative click (annotate)
MIN_SIDE = PIN + 1  # the pin on the image
FRAMES = 8  # of the good animation
REFUSED = "refused "  # what the --serve side prints, then the reason, for a model it cannot load
EXPECTED = {"info": 200, "page": 200, "animate": 200, "annotate": 200, "huge_image": 413,
            "long_animation": 413, "oversized_body": 413, "negative_length": 400,
            "wrong_type": 415, "foreign_origin": 403, "foreign_host": 403, "half_sent": 408,
            "idle": "closed"}


def flat_png(width, height):
    """A grey PNG of any size made without its pixels in memory (deflate of zero rows)."""
    row, packer, parts = b"\0" * (width + 1), zlib.compressobj(9), []
    for start in range(0, height, 256):
        parts.append(packer.compress(row * min(256, height - start)))
    parts.append(packer.flush())

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                              0, 0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def textured_png(side, seed=0):
    """A side x side PNG with texture and a bright square: something for the model to move."""
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.uniform(0, 255, (side, side, 3)).astype(np.float32), (0, 0), 2)
    image = (image * 0.4 + 80).astype(np.uint8)
    image[side // 3: 2 * side // 3, side // 3: 2 * side // 3] = (30, 30, 220)
    return cv2.imencode(".png", image)[1].tobytes()


def _data_url(png):
    return "data:image/png;base64," + base64.b64encode(png).decode()


class Requests:
    """The raw bytes of each kind of request, made once."""

    def __init__(self, port, info, side):
        self.port, self.host = port, f"{HOST}:{port}"
        image = _data_url(textured_png(side))
        c = side // 2
        self.bodies = {
            "animate": {"image": image, "arrows": [[c, c, side // 10, 0], [PIN, PIN, 0, 0]],
                        "frames": FRAMES},
            "annotate": {"image": image, "positive": [[c, c]], "negative": [[PIN, PIN]],
                         "refine": "none"},
            "huge_image": {"image": _data_url(flat_png(20000, 20000)), "arrows": [[1, 1, 1, 1]]},
            "long_animation": {"image": _data_url(flat_png(info["max_side"], info["max_side"])),
                               "arrows": [[1, 1, 1, 1]], "frames": info["max_frames"]},
        }
        self.max_bytes = info["max_bytes"]

    def head(self, method, path, length=None, content_type="application/json", extra=()):
        lines = [f"{method} {path} HTTP/1.1"]
        if not any(name == "Host" for name, _ in extra):
            lines.append(f"Host: {self.host}")
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        if length is not None:
            lines.append(f"Content-Length: {length}")
        lines += [f"{name}: {value}" for name, value in extra]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def make(self, kind):
        """(bytes to send, whether to hold the connection open after them)."""
        if kind == "info":
            return self.head("GET", "/api/info", content_type=None), False
        if kind == "page":
            return self.head("GET", "/", content_type=None), False
        if kind in self.bodies:
            body = json.dumps(self.bodies[kind]).encode()
            route = "/api/annotate" if kind == "annotate" else "/api/animate"
            return self.head("POST", route, len(body)) + body, False
        body = json.dumps(self.bodies["animate"]).encode()
        if kind == "oversized_body":
            return self.head("POST", "/api/animate", self.max_bytes + 1), True
        if kind == "negative_length":
            return self.head("POST", "/api/animate", -1) + body, True
        if kind == "wrong_type":
            return self.head("POST", "/api/animate", len(body), "text/plain") + body, False
        if kind == "foreign_origin":
            return self.head("POST", "/api/animate", len(body),
                             extra=[("Origin", "http://evil.example")]) + body, False
        if kind == "foreign_host":
            return self.head("POST", "/api/animate", len(body),
                             extra=[("Host", f"rebound.example:{self.port}")]) + body, False
        if kind == "half_sent":
            return self.head("POST", "/api/animate", len(body)) + body[:len(body) // 10], True
        if kind == "idle":
            return b"", True
        raise ValueError(f"unknown request kind {kind!r}")


def send(port, data, hold):
    """One request over a fresh connection -> (outcome, seconds): the HTTP status, or 'closed'
    (the server closed without an answer), 'reset', 'refused' or 'timeout' (no answer within
    CLIENT_WAIT_S: the server holds the connection)."""
    start, received = time.monotonic(), b""
    try:
        with socket.create_connection((HOST, port), timeout=CLIENT_WAIT_S) as client:
            if data:
                client.sendall(data)
            if not hold:
                client.shutdown(socket.SHUT_WR)
            while True:
                part = client.recv(65536)
                if not part:
                    break
                received += part
                if b"\r\n\r\n" in received and received.startswith(b"HTTP/"):
                    head, _, body = received.partition(b"\r\n\r\n")
                    length = [int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")]
                    if length and len(body) >= length[0]:
                        break
    except socket.timeout:
        return "timeout", time.monotonic() - start
    except ConnectionRefusedError:
        return "refused", time.monotonic() - start
    except OSError:  # reset, or closed under a write (ENOTCONN, EPIPE)
        if not received.startswith(b"HTTP/"):
            return "reset", time.monotonic() - start
    seconds = time.monotonic() - start
    if not received:
        return "closed", seconds
    return int(received.split(b" ", 2)[1]), seconds


def _status(pid):
    """The server's /proc/<pid>/status fields, in kB or counts."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM", "Threads"):
                fields[name] = int(value.split()[0])
    return fields


def start_server(model, request_timeout):
    """This file with --serve, on a free localhost port: (process, port). A model the server
    cannot load is a ValueError naming --model (the server's reason), not its traceback."""
    command = [sys.executable, os.path.abspath(__file__), "--serve",
               f"--request_timeout={request_timeout}"] + ([f"--model={model}"] if model else [])
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                               env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    deadline = time.monotonic() + START_WAIT_S
    line = ""
    while time.monotonic() < deadline and process.poll() is None:
        line = process.stdout.readline()
        if line.startswith("port "):
            return process, int(line.split()[1])
        if line.startswith(REFUSED):
            process.wait()
            raise ValueError(line[len(REFUSED):].strip())
    process.kill()
    raise RuntimeError(f"the server did not start (exit {process.poll()}; said {line!r}).")


def get_info(port):
    with socket.create_connection((HOST, port), timeout=CLIENT_WAIT_S) as client:
        client.sendall(f"GET /api/info HTTP/1.0\r\nHost: {HOST}:{port}\r\n\r\n".encode())
        received = b""
        while part := client.recv(65536):
            received += part
    return json.loads(received.partition(b"\r\n\r\n")[2])


def run_load(port, requests, duration, clients):
    """{kind: [(outcome, seconds), ...]} from `clients` threads for `duration` seconds."""
    kinds = list(EXPECTED)
    results = {kind: [] for kind in kinds}
    lock = threading.Lock()
    stop = time.monotonic() + duration
    made = {kind: requests.make(kind) for kind in kinds}
    turns = iter(range(sys.maxsize))  # one sequence for all threads: every kind comes round

    def client():  # past --duration too, until each kind has been answered once
        while time.monotonic() < stop or not all(results[kind] for kind in kinds):
            with lock:
                kind = kinds[next(turns) % len(kinds)]
            outcome = send(port, *made[kind])
            with lock:
                results[kind].append(outcome)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    return threads, results


def summarise(results, expected=EXPECTED):
    rows = {}
    for kind, outcomes in results.items():
        statuses, others = {}, {}
        for outcome, _ in outcomes:
            target = statuses if isinstance(outcome, int) else others
            target[str(outcome)] = target.get(str(outcome), 0) + 1
        seconds = [s for _, s in outcomes]
        rows[kind] = dict(
            requests=len(outcomes), answered=sum(statuses.values()), statuses=statuses,
            no_answer=others, expected=str(expected[kind]),
            as_expected=bool(outcomes) and all(str(o) == str(expected[kind])
                                               for o, _ in outcomes),
            median_s=statistics.median(seconds) if seconds else None,
            max_s=max(seconds) if seconds else None)
    return rows


def serve():
    """The --serve side: the page's server with the given model and request timeout; a model
    it cannot load is told to the load side on stdout (REFUSED), where it ends the command."""
    from cmp_tf.apps import inputs

    # As `python -m cmp_tf.apps.web` serves by default: the network sees at most 512 px a side.
    try:
        propagator = inputs.load_propagator(_MODEL.value, "--model", max_side=animate.MAX_SIDE)
    except ValueError as error:
        print(REFUSED + " ".join(str(error).split()), flush=True)
        sys.exit(1)
    propagator.warm_up()  # as the command does: no request waits for the model's first call
    httpd = server_lib.make_server(propagator, HOST, 0, request_timeout=_REQUEST_TIMEOUT.value)
    print(f"port {httpd.server_address[1]}", flush=True)
    httpd.serve_forever()


def check_side(side):
    """Refuses a --side whose good requests the server would refuse (too small for their pin
    to lie on the image, or larger than the server's MAX_SIDE, or MAX_RENDER_PIXELS over the
    animation's frames): they would be reported as the server answering otherwise than it
    should."""
    largest = min(server_lib.MAX_SIDE, math.isqrt(animate.MAX_RENDER_PIXELS // FRAMES))
    if not MIN_SIDE <= side <= largest:
        raise ValueError(f"--side={side} must lie in [{MIN_SIDE}, {largest}] px: the good "
                         f"requests pin the point ({PIN}, {PIN}) on the image, and the server "
                         f"takes at most {largest} px a side for {FRAMES} frames.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
    if _SERVE.value:
        return serve()
    for name, value in (("--duration", _DURATION.value),
                        ("--request_timeout", _REQUEST_TIMEOUT.value)):
        if not value > 0:
            raise app.UsageError(f"{name}={value} must be positive.")
    check_side(_SIDE.value)
    process, port = start_server(_MODEL.value, _REQUEST_TIMEOUT.value)
    try:
        info = get_info(port)
        baseline = _status(process.pid)
        requests = Requests(port, info, _SIDE.value)
        start = time.monotonic()
        threads, results = run_load(port, requests, _DURATION.value, _CLIENTS.value)
        peak_threads = baseline["Threads"]
        while any(thread.is_alive() for thread in threads) and process.poll() is None:
            peak_threads = max(peak_threads, _status(process.pid)["Threads"])
            time.sleep(SAMPLE_S)
        elapsed = time.monotonic() - start
        alive = process.poll() is None
        after = send(port, *requests.make("info"))[0] if alive else None
        final = _status(process.pid) if alive else {}
    finally:
        process.kill()
        process.wait()
    rows = summarise(results)
    peak_mb, bound = final.get("VmHWM", 0) / 1024, _MEMORY_BOUND.value or MEMORY_BOUND_MB
    report = dict(
        duration_s=_DURATION.value, elapsed_s=elapsed, clients=_CLIENTS.value,
        side=_SIDE.value, request_timeout_s=_REQUEST_TIMEOUT.value, model=info["model"],
        limits={k: info[k] for k in ("max_bytes", "max_side", "max_frames",
                                     "max_render_pixels")},
        kinds=rows, baseline_rss_mb=baseline["VmRSS"] / 1024, peak_rss_mb=peak_mb,
        peak_threads=peak_threads, memory_bound_mb=bound,
        stayed_up=alive and after == 200, under_bound=alive and peak_mb <= bound,
        all_as_expected=all(row["as_expected"] for row in rows.values()))
    print(f"{_CLIENTS.value} clients, {elapsed:.1f} s (load {_DURATION.value:g} s), images "
          f"{_SIDE.value} px, server request_timeout {_REQUEST_TIMEOUT.value:g} s")
    print(f"{'kind':<17}{'requests':>9}{'answered':>9}  {'by status':<18}{'no answer':<12}"
          f"{'expected':>9}{'median s':>10}{'max s':>8}")
    for kind, row in rows.items():
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(row["statuses"].items())) or "-"
        others = ", ".join(f"{k}: {v}" for k, v in sorted(row["no_answer"].items())) or "-"
        mark = "" if row["as_expected"] else " !"
        median = f"{row['median_s']:.3f}" if row["median_s"] is not None else "-"
        most = f"{row['max_s']:.2f}" if row["max_s"] is not None else "-"
        print(f"{kind:<17}{row['requests']:>9}{row['answered']:>9}  {statuses:<18}{others:<12}"
              f"{row['expected'] + mark:>9}{median:>10}{most:>8}")
    print(f"server RSS: {report['baseline_rss_mb']:.0f} MB loaded, peak {peak_mb:.0f} MB "
          f"(bound {bound} MB: {'under' if report['under_bound'] else 'OVER'}); "
          f"peak threads {peak_threads}; stayed up: {'yes' if report['stayed_up'] else 'NO'}; "
          f"every kind answered as expected: {'yes' if report['all_as_expected'] else 'NO'}")
    path = reference_lib.write_json(os.path.join(_OUT.value, "web_load.json"), report,
                                    indent=2)
    plot = reference_lib.write_plot(path, [
        reference_lib.Panel(f"{_CLIENTS.value} clients, {elapsed:.1f} s, images {_SIDE.value} px",
                            list(rows), {"median s": [r["median_s"] for r in rows.values()],
                                         "max s": [r["max_s"] for r in rows.values()]},
                            "seconds per request"),
        reference_lib.Panel("Server memory", ["loaded", "peak", "bound"],
                            {"RSS": [report["baseline_rss_mb"], peak_mb, bound]}, "MB")])
    print(f"Wrote {path} and {plot}")
    if not (report["stayed_up"] and report["under_bound"] and report["all_as_expected"]):
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main)
