"""Shared test set-up: quiet TensorFlow, recipes by name."""
import importlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


def load_config(name, arg=None):
    """The recipe `configs/<name>.py` as train.py would load it (without flag overrides)."""
    return importlib.import_module(f"configs.{name}").get_config(arg)


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)
