"""Shared test set-up: quiet TensorFlow, recipes by name, the shipped model, a server thread.

The suite gives the same result whatever the user has under data/cache: recipes' relative
cache folders resolve under a fresh temporary folder (cmp_tf.data.CACHE_HOME_ENV, inherited
by the commands the tests run), removed when the session ends. Every other temporary file or
folder, the libraries' own included, goes under that session's folder too (TMPDIR, inherited
the same way), so the suite leaves nothing behind in the system's temporary folder.

The suite runs on pytest-xdist's worker processes (pyproject.toml): they share the run's
folder, made by the first process and inherited by the rest, and each keeps its own inside it
(its cache too: two workers never write one clip's shards at once). One level per process,
not one inside another: Chromium's socket path in the browser tests must stay short.
"""
import atexit
import contextlib
import importlib
import os
import shutil
import tempfile
import threading

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_SESSION_ENV = "CMP_TF_TEST_SESSION_TMP"  # the run's folder, for its worker processes
_SESSION_TMP = os.environ.get(_SESSION_ENV)
if not (_SESSION_TMP and os.path.isdir(_SESSION_TMP)):
    _SESSION_TMP = tempfile.mkdtemp(prefix="cmp_tf_test_")
    os.environ[_SESSION_ENV] = _SESSION_TMP
    atexit.register(shutil.rmtree, _SESSION_TMP, ignore_errors=True)
# By process id: this file is imported twice, as conftest and as tests.conftest.
_PROCESS_TMP = os.path.join(_SESSION_TMP, str(os.getpid()))
_CACHE_HOME = os.path.join(_PROCESS_TMP, "cache")
os.makedirs(_CACHE_HOME, exist_ok=True)
os.environ["TMPDIR"] = tempfile.tempdir = _PROCESS_TMP  # this process and the commands run
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
