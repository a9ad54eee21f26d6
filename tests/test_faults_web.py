"""Hostile and broken requests to the page's server, and images too large for the animation:
each is refused with the header, field or limit named, before the work or memory it would cost
(real HTTP against the server on 127.0.0.1)."""
import base64
import io
import json
import os
import socket
import struct
import subprocess
import sys
import time
import zlib

import cv2
import numpy as np
import pytest

from cmp_tf.apps import animate
from cmp_tf.apps import inputs
from cmp_tf.apps.web import server as server_lib
from tests.helpers import serving

SIDE = 256  # the test server's max_side
TIMEOUT = 1.0  # s: the test server's request_timeout
PATIENCE = 20  # s: how long a client here waits for an answer before calling the server hung
PEAK_MB = 1500  # the animate command refusing a huge image: TensorFlow loaded, no image


def flat_png(width, height):
    """A grey PNG of any size, flat black, written without the pixels ever being in memory:
    20000x20000 is 0.4 MB (deflate packs the zero rows ~1000:1)."""
    row, rows_per_block = b"\0" * (width + 1), 256  # filter byte 0, then the row
    packer, parts = zlib.compressobj(9), []
    for start in range(0, height, rows_per_block):
        parts.append(packer.compress(row * min(rows_per_block, height - start)))
    parts.append(packer.flush())

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return (inputs.PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts))
            + chunk(b"IEND", b""))


def jpeg_declaring(width, height):
    """A real 16x16 JPEG (with an EXIF-like APP1 segment before its frame header) whose SOF
    is rewritten to declare width x height."""
    data = bytearray(cv2.imencode(".jpg", np.full((16, 16, 3), 90, np.uint8))[1].tobytes())
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 100) + b"Exif\0\0" + b"\0" * 94
    data[2:2] = app1
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.fixture(scope="module")
def server(propagator):
    """A server with short limits on a free localhost port."""
    with serving(server_lib.make_server(propagator, port=0, max_side=SIDE,
                                        request_timeout=TIMEOUT, max_connections=8,
                                        max_render_pixels=128 * 128 * 4)) as httpd:
        yield httpd


def _raw(httpd, head, body=b"", headers_only=False, wait=PATIENCE):
    """Sends `head` (request line and headers, without the blank line) and `body` over a
    socket that stays open, as a client that has not finished would; returns (status, JSON
    answer) or (None, None) when the server closed without one. A hung server fails here."""
    address = httpd.server_address[:2]
    with socket.create_connection(address, timeout=wait) as client:
        client.sendall(head.replace("{host}", "%s:%d" % address).encode() + b"\r\n\r\n" + body)
        if headers_only:
            return client
        received = b""
        while True:
            try:
                part = client.recv(65536)
            except socket.timeout:
                pytest.fail(f"no answer within {wait} s: the server holds the connection")
            except ConnectionResetError:
                break
            if not part:
                break
            received += part
    if not received:
        return None, None
    status = int(received.split(b" ", 2)[1])
    return status, json.loads(received.partition(b"\r\n\r\n")[2] or b"null")


def _post(httpd, body, headers=None, path="/api/animate"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", "Host: {host}", "Content-Type: application/json",
             f"Content-Length: {len(data)}"]
    for name, value in (headers or {}).items():
        lines = [line for line in lines if not line.lower().startswith(name.lower() + ":")]
        if value is not None:
            lines.append(f"{name}: {value}")
    return _raw(httpd, "\r\n".join(lines), data)


def _b64(data):
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _small_png(side=128):
    return cv2.imencode(".png", np.full((side, side, 3), 128, np.uint8))[1].tobytes()


# --- Content-Length -------------------------------------------------------------------------

@pytest.mark.parametrize("length", ["-1", "-5", "+12", "1_2", "12abc", "0x10", " ", "1e3",
                                    ["12", "13"]])
def test_a_negative_or_malformed_content_length_is_refused_before_reading(server, length):
    """`Content-Length: -1` once read the socket to its end: any size, and a thread held for as
    long as the client kept the connection open."""
    lengths = length if isinstance(length, list) else [length]
    head = "\r\n".join(["POST /api/animate HTTP/1.1", "Host: {host}",
                        "Content-Type: application/json"] +
                       [f"Content-Length: {value}" for value in lengths])
    status, answer = _raw(server, head, b'{"image": "' + b"A" * 4096)  # never ends
    assert status == 400 and "Content-Length" in answer["error"], answer


def test_a_body_without_a_length_is_refused(server):
    status, answer = _raw(server, "POST /api/animate HTTP/1.1\r\nHost: {host}\r\n"
                          "Content-Type: application/json", b"{}")
    assert status == 411 and "Content-Length" in answer["error"]
    status, answer = _raw(server, "POST /api/animate HTTP/1.1\r\nHost: {host}\r\n"
                          "Content-Type: application/json\r\nTransfer-Encoding: chunked",
                          b"2\r\n{}\r\n0\r\n\r\n")
    assert status == 411 and "Transfer-Encoding" in answer["error"]


# --- the image's size, from its header ----------------------------------------------------------

def test_image_sizes_are_read_from_headers():
    assert inputs.image_size(flat_png(20000, 30000)) == (20000, 30000)
    assert inputs.image_size(jpeg_declaring(20000, 300)) == (20000, 300)
    for suffix in (".png", ".jpg", ".webp", ".bmp"):
        data = cv2.imencode(suffix, np.zeros((40, 300, 3), np.uint8))[1].tobytes()
        assert inputs.image_size(data) == (300, 40), suffix
    for broken in (b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xd9", b"text"):
        with pytest.raises(ValueError, match="image could not be decoded as an image"):
            inputs.image_size(broken)


def test_a_photo_turned_by_its_exif_orientation_is_sized_as_shown(server):
    """A phone's portrait photo: stored 60 x 40, shown (by OpenCV and the browser) 40 x 60. Its
    points were checked against the stored size, so the lower part could not be guided."""
    from PIL import Image

    exif = Image.Exif()
    exif[inputs.EXIF_ORIENTATION] = 6
    stored = io.BytesIO()
    Image.new("RGB", (60, 40), (90, 120, 150)).save(stored, "JPEG", exif=exif)
    data = stored.getvalue()
    assert inputs.image_size(data) == (40, 60)
    assert inputs.decode_image(data).shape == (60, 40, 3)
    image = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    status, answer = _post(server, {"image": image, "arrows": [[10, 55, 3, 0]], "frames": 2})
    assert status == 200, answer


@pytest.fixture
def no_decoding(monkeypatch):
    """OpenCV's decoders fail the test if called: what is refused must be refused unread."""
    def decoded(*args, **kwargs):
        raise AssertionError("an image was decoded before its size was checked")

    monkeypatch.setattr(cv2, "imdecode", decoded)
    monkeypatch.setattr(cv2, "imread", decoded)


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_a_huge_image_is_refused_from_its_header_before_decoding(server, no_decoding, kind):
    """A 0.4 MB PNG of 20000x20000 once took 2.3 GB and 7 s to decode before it was refused."""
    data = flat_png(20000, 20000) if kind == "png" else jpeg_declaring(20000, 20000)
    assert len(data) < server.max_bytes
    status, answer = _post(server, {"image": _b64(data), "arrows": [[1, 2, 3, 4]]})
    assert status == 413, answer
    assert f"image is 20000x20000 px; at most {SIDE} px a side" in answer["error"]
    status, answer = _post(server, {"image": _b64(data), "positive": [[1, 2]]},
                           path="/api/annotate")
    assert status == 413 and "20000x20000" in answer["error"]


# --- JSON from this server's own page only ----------------------------------------------------

@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
def test_only_json_bodies_are_accepted(server, content_type):
    """text/plain and forms are what another site's page can post without asking first."""
    status, answer = _post(server, {"image": _b64(_small_png()), "arrows": [[1, 2, 3, 4]]},
                           {"Content-Type": content_type})
    assert status == 415 and "Content-Type must be application/json" in answer["error"]


@pytest.mark.parametrize("header, value, named", [
    ("Origin", "http://evil.example", "Origin"),
    ("Origin", "null", "Origin"),
    ("Origin", "http://127.0.0.1:1", "Origin"),
    ("Origin", "https://{host}", "Origin"),
    ("Host", "evil.example", "Host"),
    ("Host", "rebound.example:{port}", "Host"),
    ("Host", "127.0.0.1:1", "Host"),
])
def test_a_foreign_origin_or_host_is_refused(server, header, value, named):
    """Any page the user visits could post to the server (CSRF), or reach it under its own
    name rebound to 127.0.0.1 (DNS rebinding)."""
    host, port = server.server_address[:2]
    value = value.replace("{host}", f"{host}:{port}").replace("{port}", str(port))
    status, answer = _post(server, {"image": _b64(_small_png()), "arrows": [[1, 2, 3, 4]]},
                           {header: value})
    assert status == 403 and named in answer["error"], answer
    status, answer = _raw(server, "GET /api/info HTTP/1.1\r\n" + (
        f"Host: {value}" if header == "Host" else f"Host: {{host}}\r\nOrigin: {value}"))
    assert status == 403 and named in answer["error"], answer


def test_the_servers_own_names_and_origin_are_accepted(server):
    port = server.server_address[1]
    for host in ("127.0.0.1", "localhost", "LOCALHOST"):
        status, answer = _post(server, {"image": _b64(_small_png()), "arrows": [[1, 2, 3]]},
                               {"Host": f"{host}:{port}", "Origin": f"http://{host}:{port}",
                                "Content-Type": "application/json; charset=utf-8"})
        assert status == 400 and "arrows item 1" in answer["error"], answer  # reached the app
    assert "[::1]:%d" % port in server.hosts


def test_guidance_is_counted_before_it_is_read(server):
    """A million clicks were read one by one before any worker was taken: 15 s of a core."""
    many = [[5, 5]] * (server_lib.MAX_GUIDES + 1)
    status, answer = _post(server, {"image": _b64(_small_png()), "positive": many},
                           path="/api/annotate")
    assert status == 400 and f"positive holds {len(many)} items; at most " \
        f"{server_lib.MAX_GUIDES} are accepted" in answer["error"], answer


def test_a_server_shared_on_the_network_answers_at_the_machines_addresses():
    """Bound to 0.0.0.0 it answered 403 to every other machine: the Host they send is this
    machine's address, which the machine's name need not resolve to. An IP address with the
    port is its own; a name (a DNS name rebound here) and another port are not."""
    hosts = server_lib.own_hosts("0.0.0.0", 8000)
    for value in ("192.0.2.7:8000", "10.1.2.3:8000", "[2001:db8::5]:8000", "localhost:8000"):
        assert value in hosts, value
    for value in ("rebound.example:8000", "192.0.2.7:8001", "192.0.2.7", "2001:db8::5:8000",
                  "192.0.2.7:8000:8000", ""):
        assert value not in hosts, value
    assert "192.0.2.7:8000" not in server_lib.own_hosts("127.0.0.1", 8000)
    assert "192.0.2.7" in server_lib.own_hosts("::", 80)
    assert "an IP address with the port" in server_lib.own_hosts("0.0.0.0", 8000).describe()


# --- held connections -------------------------------------------------------------------------

def _closed_within(client, seconds):
    """Whether the server answered or closed `client` within `seconds`."""
    client.settimeout(seconds)
    start = time.monotonic()
    try:
        while client.recv(65536):
            pass
    except socket.timeout:
        return False
    except ConnectionResetError:
        pass
    return time.monotonic() - start < seconds


def test_idle_half_sent_and_trickling_requests_are_cut_off(server):
    """Each once held a thread for as long as the client liked (300 held)."""
    address = server.server_address[:2]
    limit = TIMEOUT + 4  # s: the timeout, and slack for a busy machine
    with socket.create_connection(address) as idle:
        assert _closed_within(idle, limit)
    head = ("POST /api/animate HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\n\r\n{\"image\": " % address).encode()
    with socket.create_connection(address) as half:
        half.sendall(head)
        half.settimeout(limit)
        start = time.monotonic()
        answer = half.recv(65536)
        assert time.monotonic() - start < limit and answer.startswith(b"HTTP/1.0 408"), answer
    with socket.create_connection(address) as trickle:
        start = time.monotonic()
        for byte in head:  # a byte every 0.2 s: each read is quick, the request never ends
            try:
                trickle.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.2)
            if time.monotonic() - start > limit:
                pytest.fail("a trickling request held its connection past the timeout")
    assert time.monotonic() - start < limit


def test_an_address_it_cannot_listen_on_is_named(propagator):
    with serving(server_lib.make_server(propagator, port=0)) as httpd:
        port = httpd.server_address[1]
        with pytest.raises(ValueError, match=rf"--host=127.0.0.1 --port={port}: cannot listen "
                                             "there"):
            server_lib.make_server(propagator, port=port)
    with pytest.raises(ValueError, match=r"--host=no.such.host.invalid --port=0: cannot listen"):
        server_lib.make_server(propagator, host="no.such.host.invalid", port=0)
    for empty in ("", " "):  # `--host=$HOST` with HOST unset bound every interface
        with pytest.raises(ValueError, match=r"--host='\s*' names no address, which would open "
                                             r"the page to every machine"):
            server_lib.make_server(propagator, host=empty, port=0)


def test_connections_over_the_limit_are_answered_at_once(propagator):
    with serving(server_lib.make_server(propagator, port=0, max_connections=2,
                                        request_timeout=30)) as httpd:
        address = httpd.server_address[:2]
        held = [socket.create_connection(address) for _ in range(2)]
        time.sleep(0.3)  # both accepted
        status, answer = _raw(httpd, "GET /api/info HTTP/1.1\r\nHost: {host}", wait=5)
        assert status == 503 and "2 connections" in answer["error"]
        for client in held:
            client.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # their threads end and free the slots
            status, _ = _raw(httpd, "GET /api/info HTTP/1.1\r\nHost: {host}", wait=5)
            if status == 200:
                break
            time.sleep(0.2)
        assert status == 200


def _upload(address, body, wait=PATIENCE):
    """POSTs `body` whole, as a browser does, then reads the answer: (status, JSON), or
    (None, error) when the connection broke before an answer could be read."""
    head = (f"POST /api/animate HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json"
            f"\r\nContent-Length: {len(body)}\r\n\r\n" % address).encode()
    try:
        with socket.create_connection(address, timeout=wait) as client:
            client.sendall(head + body)
            received = b""
            while part := client.recv(65536):
                received += part
    except OSError as error:  # a broken pipe or a reset: what the page saw as a network error
        return None, error
    return int(received.split(b" ", 2)[1]), json.loads(received.partition(b"\r\n\r\n")[2])


def test_a_refused_upload_gets_its_answer_however_large_it_is(propagator):
    """A photo over max_bytes (a 413), or any upload while max_connections are open (a 503):
    the server closed on the unread body, so the client, still sending, got a broken pipe."""
    with serving(server_lib.make_server(propagator, port=0, max_connections=2,
                                        max_bytes=2**20, request_timeout=30)) as httpd:
        address = httpd.server_address[:2]
        held = [socket.create_connection(address) for _ in range(2)]
        time.sleep(0.3)  # both accepted
        for _ in range(3):
            status, answer = _upload(address, b" " * 5 * 2**19)
            assert status == 503 and "2 connections" in answer["error"], answer
        for client in held:
            client.close()
        deadline = time.monotonic() + 10
        while _raw(httpd, "GET /api/info HTTP/1.1\r\nHost: {host}", wait=5)[0] != 200:
            assert time.monotonic() < deadline, "the held connections' slots were not freed"
            time.sleep(0.2)
        status, answer = _upload(address, b" " * 5 * 2**19)
        assert status == 413 and "at most 1048576 are accepted" in answer["error"], answer


# --- the animation's size -----------------------------------------------------------------------

def test_the_pages_animation_is_bounded_by_its_rendered_pixels(server):
    image = _b64(_small_png(128))
    status, answer = _post(server, {"image": image, "arrows": [[5, 5, 1, 1]], "frames": 5})
    assert status == 413, answer
    assert "frames=5 frames of 128x128 px are 81920 pixels" in answer["error"]
    assert "MAX_RENDER_PIXELS=65536" in answer["error"]


def test_the_animate_command_refuses_a_huge_image_before_decoding(tmp_path, monkeypatch,
                                                                  no_decoding):
    """A 10000x10000 image went over 12 GB: the frames are rendered at the image's size."""
    path = tmp_path / "huge.png"
    path.write_bytes(flat_png(10000, 10000))

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded for an image over the limit")

    monkeypatch.setattr(inputs, "load_propagator", loaded)
    out = tmp_path / "a.gif"
    with pytest.raises(ValueError, match=r"huge.png is 10000x10000 px \(100000000 pixels\); at "
                                         r"most --max_pixels=2097152 pixels"):
        animate.run(None, str(path), "5,5,1,1", out=str(out))
    with pytest.raises(ValueError, match=r"at most --max_pixels=1000 pixels"):
        animate.run(None, str(path), "5,5,1,1", out=str(out), max_pixels=1000)
    small = tmp_path / "small.png"
    small.write_bytes(flat_png(128, 128))
    monkeypatch.undo()  # decoding a 128x128 image is fine
    monkeypatch.setattr(inputs, "load_propagator", loaded)
    with pytest.raises(ValueError, match=r"--frames=9000 frames of 128x128 px are 147456000 "
                                         r"pixels to render; at most MAX_RENDER_PIXELS="):
        animate.run(None, str(small), "5,5,1,1", frames=9000, out=str(out))
    with pytest.raises(ValueError, match=r"--max_pixels=0 must be a positive integer"):
        animate.run(None, str(small), "5,5,1,1", out=str(out), max_pixels=0)
    assert not out.exists()


def test_animate_frames_refuses_more_than_its_render_bound():
    image = np.zeros((32, 32, 3), np.uint8)
    flow = np.zeros((32, 32, 2), np.float32)
    assert len(animate.animate_frames(image, flow, 4, max_render_pixels=32 * 32 * 4)) == 4
    with pytest.raises(ValueError, match=r"frames=5 frames of 32x32 px .* MAX_RENDER_PIXELS=4096"):
        animate.animate_frames(image, flow, 5, max_render_pixels=32 * 32 * 4)


def _high_water_kb(pid):
    """VmHWM of a running process in kB (0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_measured(command, log, timeout, env=None, address_space_gb=None):
    """(exit code, peak resident MB) of a command run to its end: the high-water mark of its
    own memory (VmHWM, polled while it runs). Not rusage: a forked child's ru_maxrss starts at
    this process's size, which a long test session makes large. Its output goes to the file
    `log`; with `address_space_gb` its memory is capped there, so a regression fails instead
    of swapping."""
    def cap():
        import resource

        limit = int(address_space_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   preexec_fn=cap if address_space_gb else None)
    deadline = time.monotonic() + timeout
    peak_kb = 0
    while True:
        peak_kb = max(peak_kb, _high_water_kb(process.pid))
        pid, status, _ = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, peak_kb / 1024
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.fail(f"{command} ran past {timeout} s")
        time.sleep(0.2)


@pytest.mark.slow
def test_the_animate_command_stays_small_for_a_huge_image(tmp_path):
    """The command itself, in its own process: it stops naming the limit, and its peak memory
    is that of loading TensorFlow, not of a 10000x10000 image (300 MB decoded, 12 GB animated)."""
    path = tmp_path / "huge.png"
    path.write_bytes(flat_png(10000, 10000))
    log = tmp_path / "log.txt"
    code, peak_mb = run_measured(
        [sys.executable, "-m", "cmp_tf.apps.animate", f"--image={path}", "--arrows=5,5,1,1",
         f"--out={tmp_path / 'a.gif'}"], log, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), address_space_gb=8)
    output = log.read_text()
    assert code == 1 and "--max_pixels=2097152" in output, output[-2000:]
    print(f"peak RSS {peak_mb:.0f} MB")
    assert peak_mb < PEAK_MB, f"peak RSS {peak_mb:.0f} MB"


@pytest.mark.slow
def test_the_load_benchmark_runs_and_the_server_holds(tmp_path):
    """benchmarks/web_load.py for 3 s: every kind of request, good and hostile, is answered as
    it should be, and the server stays up and under the benchmark's memory bound."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, os.path.join(root, "benchmarks", "web_load.py"), "--duration=3",
         "--clients=4", "--request_timeout=1", f"--out={tmp_path}"], capture_output=True,
        text=True, timeout=600, cwd=root, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "web_load.json").read_text())
    assert report["stayed_up"] and report["under_bound"] and report["all_as_expected"]
    assert set(report["kinds"]) >= {"animate", "huge_image", "negative_length", "idle"}
    assert all(row["requests"] >= 1 for row in report["kinds"].values())
    assert 0 < report["peak_rss_mb"] <= report["memory_bound_mb"]


# --- Numbers JSON allows that Python's float does not, deep nesting, other methods -----------

def test_numbers_beyond_float_and_deep_nesting_are_400_not_500(server):
    huge = int("9" * 400)  # JSON integers have no bound; float() overflows on this one
    image = _b64(_small_png())
    for body, field in [({"image": image, "arrows": [[1, 1, huge, 1]]}, "arrows item 1"),
                        ({"image": image, "arrows": [[1, 1, 5, 0]], "fps": huge}, "fps"),
                        ({"image": image, "arrows": [[1, 1, 5, 0]], "fps": 1e-5}, "fps"),
                        ({"image": image, "arrows": [[1, 1, 5, 0]], "fps": 1000}, "fps"),
                        ({"image": image, "arrows": [[1, 1, 5, 0]], "fps": 60},
                         "fps=60: a GIF plays at most 50"),
                        ({"image": image, "arrows": [[True, 1, 5, 0]]}, "arrows item 1"),
                        ({"image": image, "arrows": [[1, True, 1, 5, 0]]}, "arrows item 1"),
                        ({"image": image, "arrows": [[1, 1, 5e6, 0]]}, "arrows item 1"),
                        ({"image": image, "arrows": [[1, 1, 5, 0]], "frame": 3},
                         "'frame': not a field of /api/animate"),
                        ({"image": image, "positive": [[1, 1]], "threshold": 0.9},
                         "'threshold': not a field of /api/annotate")]:
        route = "/api/annotate" if "positive" in body else "/api/animate"
        status, answer = _post(server, body, path=route)
        assert status == 400 and answer["error"].startswith(field), (body.get("fps"), answer)
    status, answer = _post(server, b"[" * 200_000)
    assert status == 400 and "the body is not JSON" in answer["error"]


def test_other_methods_are_405_in_json_and_head_is_get_without_a_body(server):
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PROPFIND", "FOO"):
        status, answer = _raw(server, f"{method} /api/animate HTTP/1.1\r\nHost: {{host}}\r\n"
                                      "Content-Length: 0")
        assert status == 405 and answer["error"].startswith(f"{method} is not served"), method
    address = server.server_address[:2]
    with socket.create_connection(address, timeout=PATIENCE) as client:
        client.sendall(("HEAD / HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n"
                        % address).encode())
        received = b""
        while part := client.recv(65536):
            received += part
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"200" and body == b""
    assert int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]) > 0
    # http.server's own refusals answer in JSON too (they were HTML pages).
    status, answer = _raw(server, "GET /" + "a" * 70000 + " HTTP/1.1\r\nHost: {host}")
    assert status == 414 and answer["error"] == "Request-URI Too Long", answer
    status, answer = _raw(server, "GET /" + "a" * 60000 + " HTTP/1.1\r\nHost: {host}")
    assert status == 404 and len(answer["error"]) < 200, answer  # the path cut, not echoed


def test_an_ipv6_address_is_listened_on(propagator):
    """--host=::1 failed ("Address family for hostname not supported"), yet [::1] is one of
    the names the server answers to."""
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    with serving(server_lib.make_server(propagator, host="::1", port=0)) as httpd:
        port = httpd.server_address[1]
        with socket.create_connection(("::1", port), timeout=PATIENCE) as client:
            client.sendall(f"GET /api/info HTTP/1.0\r\nHost: [::1]:{port}\r\n\r\n".encode())
            assert client.recv(65536).startswith(b"HTTP/1.0 200")


def test_the_frame_rate_has_a_range_everywhere():
    for fps in (0.001, 101, float("nan"), "8"):
        with pytest.raises(ValueError, match="fps must"):
            animate.check_fps(fps)
    assert animate.check_fps(animate.FPS) == animate.FPS
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"fps must lie in \[0.01, 100\]"):
        animate.encode_gif(frames, 1e-5)
