"""The apps' boundary: flag strings, image files and model paths in, checked arrays out.

Every error is a ValueError naming the flag (or API field) and the bad item, so the command
line, the web page and the tests report a mistake the same way.
"""
import os

import cv2
import numpy as np

from cmp_tf import runtime
from cmp_tf.data import formats

ARROW_FIELDS = ("x", "y", "u", "v")  # an arrow: start pixel (x, y) and its motion (u, v) in px
CLICK_FIELDS = ("x", "y")


def parse_rows(value, fields, name, allow_empty=False):
    """'x,y,u,v;x,y,u,v' (or a list of number lists, as JSON sends them) -> float32 [K, F].

    Args:
        fields: the names of each item's numbers, e.g. ARROW_FIELDS; F = len(fields).
        name: the flag or field the value came from, e.g. '--arrows', for the error.
        allow_empty: whether no item at all is acceptable (negative clicks are optional).
    """
    form = ",".join(fields)
    if value is None:
        items = []
    elif isinstance(value, str):
        items = [item.strip() for item in value.split(";") if item.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError(f"{name} must be '{form};...' or a list of [{form}] lists; got "
                         f"{type(value).__name__} {value!r}.")
    if not items:
        if allow_empty:
            return np.zeros((0, len(fields)), np.float32)
        raise ValueError(f"{name} needs at least one item '{form}'; got {value!r}.")
    rows = []
    for index, item in enumerate(items, 1):
        parts = item.split(",") if isinstance(item, str) else item
        try:
            numbers = [float(p) for p in parts]
        except (TypeError, ValueError):
            numbers = []
        if len(numbers) != len(fields) or not np.all(np.isfinite(numbers)):
            raise ValueError(f"{name} item {index} {item!r} must be {len(fields)} finite "
                             f"numbers {form}.")
        rows.append(numbers)
    return np.asarray(rows, np.float32)


def check_inside(points, height, width, name):
    """Refuses points (x, y) that do not round to a pixel of an H x W image, naming the item."""
    for index, (x, y) in enumerate(np.round(np.asarray(points, np.float64)[:, :2]), 1):
        if not (0 <= x <= width - 1 and 0 <= y <= height - 1):
            raise ValueError(f"{name} item {index} (x={x:g}, y={y:g}) lies outside the "
                             f"{width}x{height} image (x in [0, {width - 1}], y in "
                             f"[0, {height - 1}]).")
    return points


def _check_side(image, name, max_side):
    if max_side and max(image.shape[:2]) > max_side:
        raise ValueError(f"{name} is {image.shape[1]}x{image.shape[0]} px; at most {max_side} "
                         "px a side is accepted.")
    return image


def read_image(path, name="--image", max_side=None):
    """An image file (anything OpenCV reads: grey, alpha and 16-bit made 8-bit RGB) -> uint8
    H x W x 3 RGB; ValueError naming the flag otherwise."""
    if not path:
        raise ValueError(f"{name} is required: the path of an image file.")
    if not os.path.isfile(path):
        raise ValueError(f"{name}={path} does not exist or is not a file.")
    try:
        image = formats.read_image(path)
    except ValueError as error:
        raise ValueError(f"{name}={path} could not be read as an image (PNG, JPEG, ... that "
                         "OpenCV decodes).") from error
    return _check_side(image, f"{name}={path}", max_side)


def decode_image(data, name="image", max_side=None):
    """Encoded image bytes (PNG, JPEG, ...) -> uint8 H x W x 3 RGB; ValueError otherwise."""
    buffer = np.frombuffer(data, np.uint8) if data else np.zeros(0, np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    if image is None:
        raise ValueError(f"{name} could not be decoded as an image ({len(data or b'')} bytes; "
                         "PNG or JPEG expected).")
    return _check_side(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), name, max_side)


def load_propagator(path, name="--model", **kwargs):
    """runtime.Propagator(path) with its error prefixed by the flag: a missing file, a file of
    the wrong kind (not a CMP, an encoder export, text) or a corrupt one."""
    try:
        return runtime.Propagator(path or None, **kwargs)
    except ValueError as error:
        raise ValueError(f"{name}={path or '(the shipped model)'}: {error}") from error


def positive(value, name):
    """A strictly positive, finite number, else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not (
            np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number; got {value!r}.")
    return value


def write_rgb(path, image):
    """Writes an RGB uint8 image (PNG by extension); ValueError if OpenCV cannot."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if not cv2.imwrite(path, cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)):
        raise ValueError(f"could not write the image {path}.")
    return path
