"""The in-browser page (cmp_tf.apps.browser): the shipped model exported to ONNX runs in
headless Chromium with onnxruntime-web, and the server only hands out files. The server's
rules run everywhere; the page needs Debian's chromium + chromium-driver and the page's runtime
(`python -m cmp_tf.apps.browser.install`), both of which .ci/run installs."""
import json
import shutil
import urllib.error
import urllib.request

import numpy as np
import pytest

from cmp_tf.apps import animate
from cmp_tf.apps.browser import install
from cmp_tf.apps.browser import server as server_lib
from tests.helpers import CHROMIUM
from tests.helpers import DRIVER
from tests.helpers import chromium
from tests.helpers import drag
from tests.helpers import red_square_png
from tests.helpers import serving
from tests.helpers import tiny_cmp_onnx

SIZE = 128
TIMEOUT = 180  # s: compiling the WebAssembly runtime and the model on a busy 2-core machine


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.headers.get("Content-Type"), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type"), error.read()


@pytest.fixture()
def fake_vendor(tmp_path, monkeypatch):
    """A runtime folder with placeholder files, so the server's rules run without npm."""
    vendor = tmp_path / "static" / "vendor"
    vendor.mkdir(parents=True)
    for name in install.FILES:
        (vendor / name).write_bytes(b"\0asm" if name.endswith(".wasm") else b"// runtime")
    (vendor / install.VERSION_FILE).write_text(install.ORT_WEB_VERSION + "\n")
    static = tmp_path / "static"
    for name in ("index.html", "page.js"):
        shutil.copyfile(f"{install.STATIC}/{name}", static / name)
    monkeypatch.setattr(install, "STATIC", str(static))
    monkeypatch.setattr(install, "VENDOR", str(vendor))
    return vendor


def test_the_server_hands_out_files_only(tmp_path, fake_vendor):
    model = tiny_cmp_onnx(tmp_path / "model.onnx")
    with serving(server_lib.make_server(model, port=0)) as httpd:
        root = "http://{}:{}".format(*httpd.server_address[:2])
        status, kind, body = _get(f"{root}/model.onnx")
        assert (status, body) == (200, model.read_bytes())
        status, kind, _ = _get(f"{root}/vendor/ort-wasm-simd-threaded.wasm")
        assert (status, kind) == (200, "application/wasm")  # streaming compilation needs it
        assert _get(f"{root}/")[0] == 200 and b"page.js" in _get(f"{root}/")[2]
        for path in ("/api/animate", "/api/info", "/../server.py", "/%2e%2e/install.py"):
            assert _get(root + path)[0] == 404, path
        request = urllib.request.Request(f"{root}/api/animate", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 405 and refused.value.headers["Allow"] == "GET, HEAD"
        for method in ("TRACE", "CONNECT"):
            request = urllib.request.Request(f"{root}/", method=method)
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=30)
            assert refused.value.code == 405, method
        assert httpd.requested[:2] == ["/model.onnx", "/vendor/ort-wasm-simd-threaded.wasm"]
        status, kind, body = _get(f"{root}/model.json")  # the sides the page may feed it
        assert (status, kind) == (200, "application/json")
        assert json.loads(body) == {"multiple": 1, "minimum": 1, "maximum": None,  # its metadata
                                    "max_pixels": animate.MAX_PIXELS,
                                    "max_render_pixels": animate.MAX_RENDER_PIXELS}
        head = urllib.request.Request(f"{root}/model.onnx", method="HEAD")
        with urllib.request.urlopen(head, timeout=30) as answer:
            assert answer.status == 200 and answer.headers["Content-Length"] == str(
                    model.stat().st_size)
            assert answer.read() == b""
        # A DNS name rebound to this machine does not get the model.
        rebound = urllib.request.Request(f"{root}/model.onnx", headers={"Host": "evil.test"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(rebound, timeout=30)
        assert refused.value.code == 403


def test_a_refused_body_is_never_read_as_the_next_request(tmp_path, fake_vendor):
    import socket

    model = tiny_cmp_onnx(tmp_path / "model.onnx")
    with serving(server_lib.make_server(model, port=0)) as httpd:
        address = httpd.server_address[:2]
        host = ("%s:%d" % address).encode()
        smuggled = b"GET /model.onnx HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
        with socket.create_connection(address, timeout=30) as client:
            client.sendall(b"POST /x HTTP/1.1\r\nHost: " + host + b"\r\nContent-Length: "
                           + str(len(smuggled)).encode() + b"\r\n\r\n" + smuggled)
            received = b""
            while part := client.recv(65536):
                received += part
        assert received.startswith(b"HTTP/1.1 405") and model.read_bytes() not in received
        for index in range(server_lib.MAX_REQUESTED + 5):
            httpd.RequestHandlerClass._note(type("H", (), {"server": httpd})(), "/p" * 300)
        assert len(httpd.requested) == server_lib.MAX_REQUESTED
        assert len(httpd.requested[-1]) == server_lib.MAX_PATH_NOTED


def test_the_server_bounds_its_connections_and_their_idle_time(tmp_path, fake_vendor):
    import socket
    import time

    model = tiny_cmp_onnx(tmp_path / "model.onnx")
    with serving(server_lib.make_server(model, port=0, request_timeout=0.5,
                                        max_connections=1)) as httpd:
        address = httpd.server_address[:2]
        with socket.create_connection(address, timeout=30) as idle:
            time.sleep(0.2)  # accepted: it holds the one connection
            with socket.create_connection(address, timeout=30) as second:
                assert second.recv(65536).startswith(b"HTTP/1.0 503")
            start = time.monotonic()
            assert idle.recv(65536) == b""  # closed without a request
            assert time.monotonic() - start < 10
        # A client sending its request a byte now and then (each within the timeout) held its
        # connection for good: the request as a whole must arrive in time.
        with socket.create_connection(address, timeout=30) as trickle:
            start = time.monotonic()
            for byte in b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"a" * 100:
                if time.monotonic() - start > 3:  # six times the request timeout
                    break
                try:
                    trickle.sendall(bytes([byte]))
                except OSError:
                    break  # cut off already
                time.sleep(0.1)
            trickle.settimeout(5)
            try:
                assert trickle.recv(65536) == b""  # closed by the server, no answer
            except ConnectionResetError:
                pass
        deadline = time.monotonic() + 10
        while _get("http://%s:%d/model.onnx" % address)[0] != 200:  # the slot is free again
            assert time.monotonic() < deadline
            time.sleep(0.1)
    with pytest.raises(ValueError, match="max_connections must be a positive number"):
        server_lib.make_server(model, port=0, max_connections=0)


def test_the_server_names_what_is_missing(tmp_path, fake_vendor):
    with pytest.raises(ValueError, match="runs an exported .onnx file"):
        server_lib.make_server(tmp_path / "model.tflite", port=0)
    model = tmp_path / "model.onnx"
    with pytest.raises(ValueError, match="--model=.*model.onnx: .*does not exist"):
        server_lib.make_server(model, port=0, name="--model")
    model.write_bytes(b"onnx")  # not a model: refused before anything is served
    with pytest.raises(ValueError, match="model=.*model.onnx.*could not be loaded by ONNX Runtime"):
        server_lib.make_server(model, port=0)
    tiny_cmp_onnx(model)
    (fake_vendor / install.VERSION_FILE).write_text("0.0.1\n")  # another version
    assert not install.installed(str(fake_vendor))
    with pytest.raises(ValueError, match="python -m cmp_tf.apps.browser.install"):
        server_lib.make_server(model, port=0)
    with pytest.raises(ValueError, match="npm='no-such-npm' is not on PATH"):
        install.install(str(fake_vendor), npm="no-such-npm", log=lambda _: None)


def test_an_install_cut_short_is_not_taken_for_a_whole_one(tmp_path, monkeypatch):
    """The files were copied over an installed runtime with its VERSION left in place: a copy
    that failed midway (a full disk, a read-only package) read as installed, with mixed files."""
    npm = tmp_path / "npm"  # writes the package's files where `npm install --prefix DIR` would
    npm.write_text("#!/bin/sh\nd=\"$3/node_modules/onnxruntime-web/dist\"\nmkdir -p \"$d\"\n"
                   + "".join(f"echo new > \"$d/{name}\"\n" for name in install.FILES))
    npm.chmod(0o755)
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    for name in install.FILES:
        (vendor / name).write_text("old")
    (vendor / install.VERSION_FILE).write_text(install.ORT_WEB_VERSION + "\n")
    assert install.installed(str(vendor))
    copied, copy = [], install.shutil.copyfile

    def full_after_one(source, target):
        if copied:
            raise OSError(28, "No space left on device", target)
        copied.append(copy(source, target))

    monkeypatch.setattr(install.shutil, "copyfile", full_after_one)
    with pytest.raises(OSError):
        install.install(str(vendor), npm=str(npm), log=lambda _: None)
    assert not install.installed(str(vendor))  # one new file beside old ones
    monkeypatch.undo()
    install.install(str(vendor), npm=str(npm), log=lambda _: None)
    assert install.installed(str(vendor))
    assert all((vendor / name).read_text() == "new\n" for name in install.FILES)


@pytest.fixture(scope="module")
def exported_onnx(tmp_path_factory):
    """The shipped model as a float32 .onnx with free height and width."""
    from export import export_lib

    model, config, path = export_lib.load_checkpoint(None)
    out = tmp_path_factory.mktemp("onnx")
    export_lib.export(model, config, str(out), formats=("onnx",), size=(SIZE, SIZE),
                      parity_samples=1, repeats=1, encoder=False, logits=False, source=path,
                      log=lambda _: None)
    return out / "model.onnx"


@pytest.mark.slow
@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and "
                    "chromium-driver (apt-get install chromium chromium-driver; .ci/run does)")
@pytest.mark.skipif(not install.installed(), reason="needs the page's runtime: python -m "
                    "cmp_tf.apps.browser.install (npm; .ci/run does)")
def test_the_page_propagates_an_arrow_in_the_browser(tmp_path, exported_onnx):
    """Draw an arrow and a pin, press Propagate: the browser's flow is ONNX Runtime's on the
    same inputs, moves the arrow's point along it, and no request reached an API."""
    import onnxruntime
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = red_square_png(tmp_path / "scene.png", SIZE)
    browser = chromium()
    try:
        with serving(server_lib.make_server(exported_onnx, port=0)) as httpd:
            browser.get("http://{}:{}/".format(*httpd.server_address[:2]))
            wait = WebDriverWait(browser, TIMEOUT)
            status = browser.find_element(By.ID, "status")
            wait.until(lambda d: "Model loaded" in status.text or "Could not" in status.text)
            assert "Model loaded" in status.text, status.text
            browser.find_element(By.ID, "file").send_keys(str(tmp_path / "scene.png"))
            wait.until(lambda d: f"{SIZE}×{SIZE} image" in status.text)
            canvas = browser.find_element(By.ID, "canvas")
            drag(browser, canvas, (64, 64), (84, 54))  # the square: 20 px right, 10 up
            drag(browser, canvas, (10, 10), (10, 10))  # a click: a pinned corner
            arrows = browser.execute_script("return page.arrows;")
            # the mouse over the middle of pixel (10, 20), inside the canvas's 1 px border
            at = browser.execute_script(
                "const box = page.canvas.getBoundingClientRect();"
                "return pixelAt({clientX: box.left + page.canvas.clientLeft + 10.5,"
                "                clientY: box.top + page.canvas.clientTop + 20.5});")
            assert len(arrows) == 2 and arrows[1][2:] == [0, 0]
            browser.find_element(By.ID, "propagate").click()
            wait.until(lambda d: d.execute_script("return window.cmpResult !== null;")
                       or "failed" in status.text)
            result = browser.execute_script(
                "const r = window.cmpResult; return {width: r.width, height: r.height, "
                "ms: r.ms, flow: Array.from(r.flow), at: window.cmpFlowAt(arguments[0], "
                "arguments[1])};", *arrows[0][:2])
            # two arrows on one pixel: their mean motion, as the Propagator takes them
            twice = browser.execute_script(
                "page.arrows = [[30, 40, 6, 0], [30, 40, 0, -4]];"
                "const d = inputs(arguments[0], arguments[0]).sparse.data;"
                "const at = 3 * (40 * arguments[0] + 30); return Array.from(d.slice(at, at + 3));",
                SIZE)
            # the animation is the animate command's for the page's flow
            page_flow, last = browser.execute_script(
                "return [Array.from(imageFlow(window.cmpResult, arguments[0], arguments[0])), "
                "Array.from(page.frames[page.frames.length - 1].data)];", SIZE)
            # another image: the result for the first one is gone
            red_square_png(tmp_path / "other.png", SIZE)  # the same file fires no change
            browser.find_element(By.ID, "file").send_keys(str(tmp_path / "other.png"))
            wait.until(lambda d: d.execute_script("return page.generation;") == 2)
            cleared = browser.execute_script("return window.cmpResult;")
            fetched = browser.execute_script(
                "return performance.getEntriesByType('resource').map(e => e.name);")
            requested = list(httpd.requested)
    finally:
        browser.quit()

    assert (result["width"], result["height"]) == (SIZE, SIZE) and result["ms"] > 0
    assert at == [10, 20]  # measured from the border box, it was (11, 21)
    assert np.abs(np.subtract(arrows[0][:2], [64, 64])).max() <= 1  # the pointer's rounding
    page_flow = np.array(page_flow, np.float32).reshape(SIZE, SIZE, 2)
    expected = animate.animate_frames(image, page_flow, frames=16)[-1]
    page_frame = np.array(last, np.uint8).reshape(SIZE, SIZE, 4)[..., :3]
    assert np.abs(page_frame.astype(int) - expected).max() <= 1  # rounding only
    assert cleared is None
    sparse = np.zeros((1, SIZE, SIZE, 3), np.float32)
    for x, y, u, v in arrows:
        sparse[0, int(round(y)), int(round(x))] = (u, v, 1)
    session = onnxruntime.InferenceSession(str(exported_onnx),
                                           providers=["CPUExecutionProvider"])
    want = session.run(["flow"], {"image": image[None].astype(np.float32),
                                  "sparse": sparse})[0][0]
    got = np.array(result["flow"], np.float32).reshape(SIZE, SIZE, 2)
    assert np.abs(got - want).mean() < 0.01 and np.abs(got - want).max() < 0.5
    assert np.abs(np.subtract(result["at"], arrows[0][2:])).max() < 2.0  # moves with the arrow
    assert twice == [3, -2, 1]
    assert not [p for p in requested if p.startswith("/api")], requested
    assert not [n for n in fetched if "/api" in n], fetched
    assert "/model.onnx" in requested and "/vendor/ort-wasm-simd-threaded.wasm" in requested
    print(f"in-browser forward at {SIZE}x{SIZE}: {result['ms']:.0f} ms")

