"""Helpers the tests import: recipes by name, a server thread, panning frames, an exported
file's ops, headless Chromium and a scene to load into the pages.

Kept out of conftest.py, which pytest imports itself: a test module importing from it would
import it a second time under another name and run its set-up twice."""
import contextlib
import importlib
import shutil
import threading

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
RED_SQUARE = slice(40, 88)  # the rows and columns of red_square_png's square


def load_config(name, arg=None):
    """The recipe `configs/<name>.py` as train.py would load it (without flag overrides)."""
    return importlib.import_module(f"configs.{name}").get_config(arg)


@contextlib.contextmanager
def serving(httpd):
    """Runs an HTTP server (e.g. the page's) in a daemon thread for the block."""
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def panning_frames(count=8, size=(64, 96), step=(3, 2), seed=0):
    """Frames of a textured scene panning by `step` (dx, dy) px per frame: flow is -step."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w = size
    big = rng.uniform(0, 255, (h + count * step[1] + 8, w + count * step[0] + 8, 3))
    big = cv2.GaussianBlur(big.astype(np.float32), (0, 0), 2.0)
    big = ((big - big.min()) / (big.max() - big.min()) * 255).astype(np.uint8)
    return [big[t * step[1]: t * step[1] + h, t * step[0]: t * step[0] + w].copy()
            for t in range(count)]


def tflite_ops(path):
    """(builtin op names, custom op codes) of a .tflite file's operators."""
    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as f:
        model = schema.Model.GetRootAs(bytearray(f.read()), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    builtins, custom = set(), set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        op = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if op == schema.BuiltinOperator.CUSTOM:
            custom.add(code.CustomCode().decode())
        else:
            builtins.add(names[op])
    return builtins, custom


def fills_spanning(model, side):
    """`model`'s fill layers sized for images up to `side` px while it exports: a dynamic-size
    ONNX file unrolls the passes its fills need for their `max_size` (2048 px by default, 128
    coarse passes of the geodesic fill, which tf2onnx takes minutes to convert), the same ops
    at any size."""
    from cmp_tf.models import fills
    from export import savedmodel

    return savedmodel.layers_set(savedmodel.layers_of(model, fills.FILL_LAYERS), "max_size", side)


def chromium():
    """Headless Chromium (Debian's chromium + chromium-driver) through Selenium, at a fixed
    window size and pixel ratio."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,1000",
                     "--force-device-scale-factor=1"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(DRIVER))


def drag(driver, element, start, end):
    """Drags the mouse on `element` between two image pixels (it is shown at natural size)."""
    from selenium.webdriver.common.action_chains import ActionChains

    width, height = element.size["width"], element.size["height"]
    border = driver.execute_script("return arguments[0].clientLeft;", element)
    # Selenium offsets are from the centre of the border box.
    offset = [start[0] + border - width / 2, start[1] + border - height / 2]
    chain = ActionChains(driver).move_to_element_with_offset(element, *map(round, offset))
    chain.click_and_hold()
    if end != start:
        chain.move_by_offset(end[0] - start[0], end[1] - start[1])
    chain.release().perform()


def red_square_png(path, size=128):
    """A red square (RED_SQUARE) on a textured background, `size` px square, written as a PNG:
    the image a page's user loads. Returns it, RGB."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.uniform(0, 255, (size, size, 3)).astype(np.float32), (0, 0), 2)
    image = (image * 0.4 + np.array([60, 90, 140])).clip(0, 255).astype(np.uint8)
    image[RED_SQUARE, RED_SQUARE] = (220, 30, 30)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return image


def tiny_cmp_onnx(path):
    """A valid .onnx file with a CMP's inputs, output and export metadata whose flow is the
    sparse map's vectors: for the servers' rules, without exporting a network."""
    import json

    import onnx
    from onnx import TensorProto
    from onnx import helper

    from cmp_tf import runners

    shape = [1, None, None, 3]
    graph = helper.make_graph(
        [helper.make_node("Slice", ["sparse", "starts", "ends", "axes"], ["flow"])], "tiny_cmp",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape),
         helper.make_tensor_value_info("sparse", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("flow", TensorProto.FLOAT, [1, None, None, 2])],
        [helper.make_tensor(name, TensorProto.INT64, [1], [value])
         for name, value in (("starts", 0), ("ends", 2), ("axes", 3))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    helper.set_model_props(model, {runners.METADATA_KEY: json.dumps(
        {"model": "model", "format": "onnx", "multiple": 1, "minimum": 1})})
    onnx.save(model, str(path))
    return path


# --- Commands forked from a Python that has imported TensorFlow --------------------------------

# The server: reads one JSON request a line (argv after `python`, folder, environment, the
# files for stdout and stderr), forks a child that runs the command as `python <argv>` would
# (a script, -m module or -c code as __main__, its sys.path[0], exit status, atexit), and
# answers the child's pid, then its exit status. Only the standard library, TensorFlow and Keras
# are imported before the fork: never cmp_tf, which each command imports itself.
_FORK_SERVER = r'''
import json, os, sys
import tensorflow, keras  # noqa: F401  (the ~5 s every command would spend)

def child(request):
    import atexit, builtins, runpy, tempfile, threading, types
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    tempfile.tempdir = None
    for fd, (path, mode) in enumerate([(os.devnull, os.O_RDONLY),
                                       (request["stdout"], os.O_WRONLY),
                                       (request["stderr"], os.O_WRONLY)]):
        opened = os.open(path, mode)
        os.dup2(opened, fd)
        os.close(opened)
    argv = request["argv"]
    main = sys.modules["__main__"] = types.ModuleType("__main__")  # the server's is kept
    main.__dict__.update(__builtins__=builtins, __spec__=None, __loader__=None)
    code = 0
    try:
        if argv[0] == "-m":
            sys.argv, sys.path[0] = ["-m", *argv[2:]], os.getcwd()
            runpy._run_module_as_main(argv[1], alter_argv=True)
        else:
            if argv[0] == "-c":
                sys.argv, sys.path[0], source, name = ["-c", *argv[2:]], "", argv[1], "<string>"
            else:
                sys.argv, name = list(argv), argv[0]
                sys.path[0] = os.path.dirname(os.path.realpath(name))
                main.__file__ = name
                with open(name, "rb") as f:
                    source = f.read()
            exec(compile(source, name, "exec"), main.__dict__)
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    try:
        threading._shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)

for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        child(request)
    print(json.dumps({"pid": pid}), flush=True)
    print(json.dumps({"code": os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}), flush=True)
'''
_server = None


def run_python(args, cwd, env, timeout):
    """`subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
    text=True, timeout=timeout)`, the command forked from a Python this test process keeps
    with TensorFlow and Keras imported: each command's own interpreter, flags, imports of
    cmp_tf, output and exit status, without importing TensorFlow again (~5 s a command; the
    refusals tests run by the hundred). An environment whose PYTHONPATH differs from the
    server's gets a fresh interpreter (its sys.path would differ)."""
    import json
    import os
    import select
    import subprocess
    import sys
    import tempfile

    global _server
    if _server is None or _server.poll() is not None:
        _server = subprocess.Popen([sys.executable, "-c", _FORK_SERVER], cwd=cwd, text=True,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    if env.get("PYTHONPATH") != os.environ.get("PYTHONPATH"):
        return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=timeout)
    with tempfile.TemporaryDirectory() as folder:
        out, err = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
        for path in (out, err):
            open(path, "w").close()
        _server.stdin.write(json.dumps(dict(argv=list(map(str, args)), cwd=str(cwd),
                                            env=dict(env), stdout=out, stderr=err)) + "\n")
        _server.stdin.flush()
        pid = json.loads(_server.stdout.readline())["pid"]
        if not select.select([_server.stdout], [], [], timeout)[0]:
            os.kill(pid, 9)
            _server.stdout.readline()
            raise subprocess.TimeoutExpired(args, timeout)
        code = json.loads(_server.stdout.readline())["code"]
        with open(out) as f, open(err) as g:
            stdout, stderr = f.read(), g.read()
    return subprocess.CompletedProcess([sys.executable, *args], code, stdout, stderr)
