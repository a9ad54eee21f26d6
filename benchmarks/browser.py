r"""The in-browser page's forward latency: the shipped model (or --checkpoint) exported to ONNX,
run by onnxruntime-web (WebAssembly, one thread) in headless Chromium, next to ONNX Runtime in
Python (one thread) on the same inputs.

  python -m cmp_tf.apps.browser.install      # once: the page's runtime
  python benchmarks/browser.py [--sides=128,256,384] [--repeats=5] [--checkpoint=RUN]
      [--out=runs/benchmarks]

Needs Debian's chromium and chromium-driver. Prints a table and writes browser.json, which
names the model timed, and a plot of the table, browser.png. The time is the page's own
measurement around `session.run` (performance.now()), median of --repeats after one warm-up
run; the page's drawing and animation are not in it. Each side is fed as it is, so it must
be one the model takes (a multiple of its stride, at least its minimum): the page rounds its
side, ONNX Runtime here would not.
"""
import os
import shutil
import statistics
import sys
import tempfile
import time

import cv2
import numpy as np
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import reference as reference_lib  # noqa: E402
from cmp_tf import cli  # noqa: E402
from cmp_tf import rundir  # noqa: E402
from cmp_tf.apps import inputs  # noqa: E402
from cmp_tf.apps.browser import install  # noqa: E402
from cmp_tf.apps.browser import server as server_lib  # noqa: E402
from cmp_tf.models import cmp as cmp_models  # noqa: E402

_SIDES = flags.DEFINE_list("sides", ["128", "256", "384"], "Network input sides (square).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per side (median reported).")
_OUT = cli.define_output("out", "runs/benchmarks", "Folder for browser.json and .png.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", rundir.PRETRAINED,
                                  "Run directory or .keras file to export and time; default "
                                  "the shipped model (not the newest run).")
_TIMEOUT = 300  # s for the page to load the runtime and the model, and for one run


def _chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))


def _browser_times(url, image_path, sides, repeats):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _chromium()
    try:
        browser.get(url)
        wait = WebDriverWait(browser, _TIMEOUT)
        status = browser.find_element(By.ID, "status")
        wait.until(lambda d: "Model loaded" in status.text or "Could not" in status.text)
        if "Model loaded" not in status.text:
            raise RuntimeError(status.text)
        browser.find_element(By.ID, "file").send_keys(image_path)
        wait.until(lambda d: "image:" in status.text)
        browser.execute_script("page.arrows = [[100, 100, 12, -6], [300, 300, 0, 0]];")
        times = {}
        for side in sides:
            browser.execute_script(f"document.getElementById('side').value = {side};")
            runs = []
            for _ in range(repeats + 1):
                browser.execute_script("window.cmpResult = null;")
                browser.find_element(By.ID, "propagate").click()
                wait.until(lambda d: d.execute_script("return window.cmpResult !== null;")
                           or "failed" in status.text)
                result = browser.execute_script("return window.cmpResult;")
                if result is None:
                    raise RuntimeError(status.text)
                runs.append(result["ms"] / 1000)
            times[side] = statistics.median(runs[1:])
        return times
    finally:
        browser.quit()


def check_sides(values, model, largest, name):
    """--sides as whole numbers `model` (`name` in the message) takes as they are: multiples of
    its encoders' stride, at least its minimum, at most `largest`. A side it refuses is named
    before the export and the browser's runs, not by ONNX Runtime after them."""
    sides = inputs.counts(values, "--sides", unit="whole numbers of pixels")
    return cmp_models.check_sides(model, sides, "--sides", name=name, largest=largest)


def _native_times(model_path, sides, repeats):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(model_path, options,
                                           providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    times = {}
    for side in sides:
        feeds = {"image": rng.uniform(0, 255, (1, side, side, 3)).astype(np.float32),
                 "sparse": np.zeros((1, side, side, 3), np.float32)}
        feeds["sparse"][0, side // 4, side // 4] = (12, -6, 1)
        session.run(["flow"], feeds)
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(["flow"], feeds)
            runs.append(time.perf_counter() - start)
        times[side] = statistics.median(runs)
    return times


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
    from export import export_lib

    try:
        model, config, path = export_lib.load_checkpoint(_CHECKPOINT.value)
    except ValueError as error:
        raise ValueError(f"--checkpoint={_CHECKPOINT.value}: {error}") from error
    sides = check_sides(_SIDES.value, model,
                        cmp_models.traced_max_side(model) or export_lib.MAX_SIZE, path)
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        raise app.UsageError("needs chromium and chromedriver (apt-get install chromium "
                             "chromium-driver).")
    install.check_installed()  # make_server would say so, after the export
    with tempfile.TemporaryDirectory() as tmp:
        export_lib.export(model, config, tmp, formats=("onnx",), size=(128, 128),
                          parity_samples=1, repeats=1, encoder=False, logits=False, source=path,
                          log=lambda _: None)
        onnx_path = os.path.join(tmp, "model.onnx")
        image_path = os.path.join(tmp, "photo.png")
        rng = np.random.default_rng(0)
        cv2.imwrite(image_path, rng.integers(0, 255, (max(sides), max(sides), 3), np.uint8))
        server = server_lib.make_server(onnx_path, port=0)
        import threading

        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            url = "http://{}:{}/".format(*server.server_address[:2])
            browser = _browser_times(url, image_path, sides, _REPEATS.value)
        finally:
            server.shutdown()
        native = _native_times(onnx_path, sides, _REPEATS.value)
    rows = [{"side": s, "browser_s": browser[s], "onnxruntime_s": native[s],
             "ratio": browser[s] / native[s]} for s in sides]
    shipped = rundir.is_pretrained(path)
    print(f"{'Shipped model' if shipped else 'Model'} ({path}) as float32 ONNX, batch 1, one "
          f"thread; median of {_REPEATS.value}")
    print(f"{'side':>6}  {'browser s':>10}  {'ONNX Runtime s':>14}  {'ratio':>6}")
    for r in rows:
        print(f"{r['side']:>6}  {r['browser_s']:>10.3f}  {r['onnxruntime_s']:>14.3f}  "
              f"{r['ratio']:>6.2f}")
    out = reference_lib.write_json(os.path.join(_OUT.value, "browser.json"), {
        "checkpoint": os.path.abspath(path), "shipped": shipped, "rows": rows,
        "repeats": _REPEATS.value})
    plot = reference_lib.write_plot(out, [reference_lib.Panel(
        f"{path} as float32 ONNX, batch 1, one thread, median of {_REPEATS.value}",
        [f"{r['side']} px" for r in rows], {"browser": [r["browser_s"] for r in rows],
                                            "ONNX Runtime": [r["onnxruntime_s"] for r in rows]},
        "seconds (lower is faster)")])
    print(f"Wrote {out} and {plot}")


if __name__ == "__main__":
    cli.run(main)
