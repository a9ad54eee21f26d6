"""The parts of cmp_tf that pyproject.toml's extras bring beyond the lite install, and the one
line that says which to install when a part is missing (no imports: it runs where they fail)."""

# What each extra is called in a message (and its pronoun), and the modules it brings that
# `[lite]` has not
_PARTS = {"train": ("TensorFlow and Keras", "them"),
          "export": ("the ONNX converters (tf2onnx, onnx)", "them"),
          "beam": ("Apache Beam", "it")}
_MODULES = {"tensorflow": "train", "keras": "train", "ml_collections": "train",
            "scipy": "train", "matplotlib": "train", "tensorboard": "train",
            "tf2onnx": "export", "onnx": "export", "apache_beam": "beam"}


def missing_line(what, error, alternative=None, extra=None):
    """The line saying that `what` needs an extra's part, which `error` (an ImportError) shows
    missing, and how to install it; None where `error` names no module of an extra and no
    `extra` is given. `alternative`, where given, comes before the install."""
    extra = extra or _MODULES.get(getattr(error, "name", None))
    if extra is None:
        return None
    part, them = _PARTS[extra]
    install = f"{alternative}, or install {them}" if alternative else f"install {them}"
    return (f"{what} needs {part}, which this install lacks ({error}); {install}: "
            f"pip install -r requirements.txt, or pip install \".[{extra}]\" from the checkout.")
