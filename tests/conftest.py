"""Shared test set-up: quiet TensorFlow, the run's temporary folders, the shipped model and an
untrained one (fixtures). Helpers that tests import live in tests/helpers.py.

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
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_SESSION_ENV = "CMP_TF_TEST_SESSION_TMP"  # the run's folder, for its worker processes
_SESSION_TMP = os.environ.get(_SESSION_ENV)
if not (_SESSION_TMP and os.path.isdir(_SESSION_TMP)):
    _SESSION_TMP = tempfile.mkdtemp(prefix="cmp_tf_test_")
    os.environ[_SESSION_ENV] = _SESSION_TMP
    atexit.register(shutil.rmtree, _SESSION_TMP, ignore_errors=True)
# By process id: each worker process keeps its own folder inside the run's.
_PROCESS_TMP = os.path.join(_SESSION_TMP, str(os.getpid()))
_CACHE_HOME = os.path.join(_PROCESS_TMP, "cache")
os.makedirs(_CACHE_HOME, exist_ok=True)
os.environ["TMPDIR"] = tempfile.tempdir = _PROCESS_TMP  # this process and the commands run
os.environ["CMP_TF_CACHE_HOME"] = _CACHE_HOME  # cmp_tf.data.CACHE_HOME_ENV, before any import

import pytest  # noqa: E402

from tests.helpers import load_config  # noqa: E402


@pytest.fixture(scope="session")
def propagator():
    """The shipped model behind the runtime API, loaded once for every test that uses it."""
    from cmp_tf.runtime import Propagator

    return Propagator()


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
