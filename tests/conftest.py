"""Shared test set-up: quiet TensorFlow, recipes by name, the shipped model, a server thread.

The suite gives the same result whatever the user has under data/cache: recipes' relative
cache folders resolve under a fresh temporary folder (cmp_tf.data.CACHE_HOME_ENV, inherited
by the commands the tests run), removed when the session ends. Every other temporary file or
folder, the libraries' own included, goes under that session's folder too (TMPDIR, inherited
the same way), so the suite leaves nothing behind in the system's temporary folder.
"""
import atexit
import contextlib
import importlib
import os
import shutil
import tempfile
import threading

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_SESSION_TMP = tempfile.mkdtemp(prefix="cmp_tf_test_")
atexit.register(shutil.rmtree, _SESSION_TMP, ignore_errors=True)
os.environ["TMPDIR"] = tempfile.tempdir = _SESSION_TMP  # this process and the commands run
_CACHE_HOME = os.path.join(_SESSION_TMP, "cache")
os.makedirs(_CACHE_HOME)
os.environ["CMP_TF_CACHE_HOME"] = _CACHE_HOME  # cmp_tf.data.CACHE_HOME_ENV, before any import

import pytest  # noqa: E402


def load_config(name, arg=None):
    """The recipe `configs/<name>.py` as train.py would load it (without flag overrides)."""
    return importlib.import_module(f"configs.{name}").get_config(arg)


@pytest.fixture(scope="session")
def propagator():
    """The shipped model behind the runtime API, loaded once for every test that uses it."""
    from cmp_tf.runtime import Propagator

    return Propagator()


@contextlib.contextmanager
def serving(httpd):
    """Runs an HTTP server (e.g. the page's) in a daemon thread for the block."""
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="session")
def saved_default(tmp_path_factory):
    """An untrained default-recipe model saved as .keras."""
    from cmp_tf import models

    path = tmp_path_factory.mktemp("model") / "default.keras"
    models.build_cmp(load_config("cpu_bins")).save(path)
    return path


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)


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


def write_video(path, frames, fps=10):
    """Writes RGB frames as an MJPG .avi that OpenCV reads back."""
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened(), f"OpenCV cannot write {path}"
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return str(path)
