"""The apps' boundary: flag strings, image files and model paths in, checked arrays out.

Every error is a ValueError naming the flag (or API field) and the bad item, so the command
line, the web page and the tests report a mistake the same way.
"""
import io
import math
import numbers
import os
import struct

import cv2
import numpy as np

from cmp_tf import rundir
from cmp_tf import runtime
from cmp_tf.data import formats
from cmp_tf.data import sampling

ARROW_FIELDS = ("x", "y", "u", "v")  # an arrow: start pixel (x, y) and its motion (u, v) in px
CLICK_FIELDS = ("x", "y")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not
#   DHT, JPG, DAC): the segment that holds the frame's height and width
JPEG_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn and TEM: markers without a length


def parse_rows(value, fields, name, allow_empty=False, max_items=None):
    """'x,y,u,v;x,y,u,v' (or a list of number lists, as JSON sends them) -> float32 [K, F].

    Args:
        fields: the names of each item's numbers, e.g. ARROW_FIELDS; F = len(fields).
        name: the flag or field the value came from, e.g. '--arrows', for the error.
        allow_empty: whether no item at all is acceptable (negative clicks are optional).
        max_items: the most items accepted, counted before any is read (a service's bound
            on the work one request asks for); None: no bound.
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
                         f"{type(value).__name__} {runtime.short_repr(value)}.")
    if not items:
        if allow_empty:
            return np.zeros((0, len(fields)), np.float32)
        raise ValueError(f"{name} needs at least one item '{form}'; got {value!r}.")
    if max_items is not None and len(items) > max_items:
        raise ValueError(f"{name} holds {len(items)} items; at most {max_items} are accepted.")
    rows = []
    for index, item in enumerate(items, 1):
        row = _numbers(item)
        if len(row) != len(fields) or None in row or not all(math.isfinite(n) for n in row):
            raise ValueError(f"{name} item {index} {runtime.short_repr(item)} must be "
                             f"{len(fields)} finite numbers {form}.")
        if max(abs(n) for n in row) > sampling.MAX_VECTOR_PX:  # no image is that large
            raise ValueError(f"{name} item {index} {runtime.short_repr(item)}: each number "
                             f"must be at most {sampling.MAX_VECTOR_PX:g} in size.")
        rows.append(row)
    return np.asarray(rows, np.float32)


def _numbers(item):
    """An item's numbers as floats, None for each that is not one: text 'x,y' is read as the
    command line writes numbers; in a list (JSON) only numbers count, not strings, nor
    true / false, which Python would take as 1 and 0."""
    try:
        if isinstance(item, str):
            return [_written(part, float) for part in item.split(",")]
        return [float(n) if isinstance(n, numbers.Real) and not isinstance(n, (bool, np.bool_))
                else None for n in item]
    except (TypeError, ValueError, OverflowError):  # not iterable, or an int beyond float
        return []


def _written(text, kind):
    """`text` read as `kind` (float or int) as people write numbers: Python's readers also
    take '4_5' as 45, which no one means; ValueError for that as for any other non-number."""
    if "_" in text:
        raise ValueError(f"{text!r} is not a number")
    return kind(text)


def check_inside(points, height, width, name):
    """Refuses points (x, y) that do not round to a pixel of an H x W image, naming the item."""
    array = np.asarray(points, np.float64)
    if not array.size:
        return points
    if array.ndim != 2 or array.shape[1] < 2:
        raise ValueError(f"{name} must be rows of (x, y, ...); got shape {array.shape}.")
    finite = np.isfinite(array).all(1)
    if not finite.all():
        index = int(np.argmin(finite))
        raise ValueError(f"{name} item {index + 1} holds values that are not finite numbers: "
                         f"{array[index].tolist()}.")
    for index, (x, y) in enumerate(sampling.nearest_pixel(array[:, :2]), 1):
        if not (0 <= x <= width - 1 and 0 <= y <= height - 1):
            raise ValueError(f"{name} item {index} (x={x:g}, y={y:g}) lies outside the "
                             f"{width}x{height} image (x in [0, {width - 1}], y in "
                             f"[0, {height - 1}]).")
    return points


def _png_size(stream):
    """(width, height) from a PNG's IHDR, the chunk that must follow the signature."""
    head = stream.read(16)
    if len(head) < 16 or head[4:8] != b"IHDR":
        return None
    return struct.unpack(">II", head[8:16])


def _jpeg_size(stream):
    """(width, height) from a JPEG's first start-of-frame segment, walking the segments (APPn,
    EXIF, tables) before it by their lengths; no entropy-coded data is read."""
    while True:
        byte = stream.read(1)
        if byte != b"\xff":
            return None
        marker = stream.read(1)
        while marker == b"\xff":  # fill bytes
            marker = stream.read(1)
        if not marker:
            return None
        marker = marker[0]
        if marker in JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            return None
        length = stream.read(2)
        if len(length) < 2 or struct.unpack(">H", length)[0] < 2:
            return None
        length = struct.unpack(">H", length)[0] - 2
        if marker in JPEG_SOF:
            frame = stream.read(5)  # precision, height, width
            if len(frame) < 5:
                return None
            height, width = struct.unpack(">HH", frame[1:5])
            return width, height
        stream.seek(length, io.SEEK_CUR)


EXIF_ORIENTATION = 0x0112  # the EXIF tag; values 5-8 turn the picture by a quarter
TURNED = (5, 6, 7, 8)


def _turned(stream):
    """Whether a JPEG's EXIF orientation turns it by a quarter, as OpenCV and browsers show it
    (a phone's portrait photo): read by Pillow from the header's segments, no pixel decoded."""
    from PIL import Image

    stream.seek(0)
    try:
        with Image.open(stream) as image:
            return image.getexif().get(EXIF_ORIENTATION, 1) in TURNED
    except Exception:  # noqa: BLE001 - no readable EXIF: the stored orientation holds
        return False


def _pillow_size(stream, name):
    """Any other format Pillow identifies: its header readers, which decode no pixel data."""
    from PIL import Image  # imageio's dependency; imported here, only for such formats

    try:
        with Image.open(stream) as image:
            return image.size
    except Image.DecompressionBombError as error:
        raise ValueError(f"{name} declares more than {2 * Image.MAX_IMAGE_PIXELS} pixels in its "
                         "header; it is not decoded.") from error
    except (OSError, SyntaxError, ValueError):  # not an image Pillow knows, or a broken header
        return None


def image_size(source, name="image"):
    """(width, height) an encoded image declares in its header, read without decoding the
    pixels, so that a small file of a huge image (a flat 20000x20000 PNG is 0.4 MB) is refused
    before it is unpacked. PNG (IHDR) and JPEG (SOF) are read here, other formats by Pillow's
    header readers. A JPEG turned by its EXIF orientation has its size as shown, turned, as
    OpenCV decodes it and a browser draws it.

    Args:
        source: the encoded bytes, or the path of an image file.
        name: the flag or field it came from, for the error.
    Raises:
        ValueError naming `name` when no header gives a size.
    """
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else \
        open(source, "rb")
    with stream:
        start = stream.read(len(PNG_SIGNATURE))
        size = None
        if start == PNG_SIGNATURE:
            size = _png_size(stream)
        elif start[:2] == b"\xff\xd8":  # start of image
            stream.seek(2)
            size = _jpeg_size(stream)
            if size is not None and _turned(stream):
                size = size[::-1]
        else:
            stream.seek(0)
            size = _pillow_size(stream, name)
    if size is None or min(size) < 1:
        raise ValueError(f"{name} could not be decoded as an image (no image header with a "
                         "size; PNG or JPEG expected).")
    return int(size[0]), int(size[1])


def check_image_size(size, name, max_side=None, max_pixels=None, limit_name=None):
    """Refuses a (width, height) over `max_side` px a side or `max_pixels` in all, naming the
    image, its size and the limit (`limit_name`, e.g. '--max_pixels', when a flag sets it)."""
    width, height = size
    if max_side and max(width, height) > max_side:
        raise ValueError(f"{name} is {width}x{height} px; at most {max_side} px a side is "
                         "accepted.")
    if max_pixels and width * height > max_pixels:
        limit = f"{limit_name}={max_pixels}" if limit_name else str(max_pixels)
        raise ValueError(f"{name} is {width}x{height} px ({width * height} pixels); at most "
                         f"{limit} pixels are accepted: shrink the image"
                         + (f" or raise {limit_name}." if limit_name else "."))
    return size


def _check_decoded(image, size, name):
    """The decoder must agree with the header that was measured (turned by a quarter when
    OpenCV applies a JPEG's EXIF orientation)."""
    if image.shape[1::-1] != tuple(size) and image.shape[:2] != tuple(size):
        raise ValueError(f"{name} decodes as {image.shape[1]}x{image.shape[0]} px, not the "
                         f"{size[0]}x{size[1]} px its header declares.")
    return image


def read_image(path, name="--image", max_side=None, max_pixels=None, limit_name=None):
    """An image file (anything OpenCV reads: grey, alpha and 16-bit made 8-bit RGB) -> uint8
    H x W x 3 RGB; ValueError naming the flag otherwise. With `max_side` or `max_pixels` the
    size is read from the file's header and checked before any pixel is decoded."""
    if not path:
        raise ValueError(f"{name} is required: the path of an image file.")
    if not os.path.isfile(path):
        raise ValueError(f"{name}={path} does not exist or is not a file.")
    size = None
    if max_side or max_pixels:
        try:
            size = image_size(path, f"{name}={path}")
        except ValueError as error:
            raise ValueError(f"{name}={path} could not be read as an image: no header gives its "
                             "size (PNG, JPEG, or another format Pillow reads).") from error
        check_image_size(size, f"{name}={path}", max_side, max_pixels, limit_name)
    try:
        image = formats.read_image(path)
    except ValueError as error:
        raise ValueError(f"{name}={path} could not be read as an image (PNG, JPEG, ... that "
                         f"OpenCV decodes): {error}") from error
    return image if size is None else _check_decoded(image, size, f"{name}={path}")


def decode_image(data, name="image", max_side=None, max_pixels=None):
    """Encoded image bytes (PNG, JPEG, ...) -> uint8 H x W x 3 RGB; ValueError otherwise. The
    size is read from the header and checked against the limits before decoding."""
    if data is not None and not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"{name} must be an encoded image's bytes; got {type(data).__name__}.")
    data = bytes(data or b"")
    size = check_image_size(image_size(data, name), name, max_side, max_pixels)
    if formats.truncated_jpeg(data[:2], data[-64:]):
        raise ValueError(f"{name} is a JPEG cut short (no end-of-image marker, {len(data)} "
                         "bytes).")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{name} could not be decoded as an image ({len(data)} bytes; "
                         "PNG or JPEG expected).")
    return _check_decoded(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), size, name)


def load_propagator(path, name="--model", max_side_name="--max_side", **kwargs):
    """runtime.Propagator(path) with its error prefixed by the flag: a missing file, a file of
    the wrong kind (not a CMP, an encoder export, text) or a corrupt one; a bad `max_side` is
    the flag `max_side_name`'s."""
    runtime.check_max_side(kwargs.get("max_side", -1), max_side_name)
    try:
        return runtime.Propagator(path or None, **kwargs)
    except ValueError as error:
        raise ValueError(f"{name}={path or '(the shipped model)'}: {error}") from error


SHIPPED = "shipped"  # a model flag's name for the model that ships with cmp_tf


def load_propagators(paths, name="--model"):
    """{label: Propagator} for a repeated model flag, to compare models on the same inputs:
    SHIPPED is the shipped model, a path is labelled by its file or folder name (made unique
    with _2, _3, ...)."""
    if not paths:
        raise ValueError(f"{name}: give at least one model.")
    propagators = {}
    for path in paths:
        shipped = path == SHIPPED
        label = SHIPPED if shipped else os.path.splitext(
            os.path.basename(os.path.normpath(path)))[0]
        unique, n = label, 2
        while unique in propagators:
            unique, n = f"{label}_{n}", n + 1
        propagators[unique] = load_propagator(None if shipped else path, name)
    return propagators


def positive(value, name, largest=None):
    """A strictly positive, finite number (at most `largest` if given), else a ValueError
    naming it."""
    try:  # an int beyond float's range (JSON allows any) overflows here
        finite = not isinstance(value, bool) and isinstance(value, (int, float, np.number)) \
            and bool(np.isfinite(float(value)))
    except OverflowError:
        finite = False
    if not finite or not value > 0:
        raise ValueError(f"{name} must be a positive number; got {runtime.short_repr(value, 40)}.")
    if largest is not None and value > largest:
        raise ValueError(f"{name}={value:g} must be at most {largest:g}.")
    return value


def counts(values, name, minimum=1, unit="whole numbers", allow_empty=False):
    """A list flag's values (strings) as whole numbers, each >= `minimum`; else a ValueError
    naming the flag (`name`, with its dashes) and all it was given."""
    try:
        read = [_written(str(value), int) for value in values]
    except (TypeError, ValueError):
        read = None
    if read is None or (not read and not allow_empty) or min(read, default=minimum) < minimum:
        raise ValueError(f"{name}={','.join(map(str, values))} must be {unit} >= {minimum}.")
    return read


def check_not_input(out, image, out_name="--out", image_name="--image"):
    """Refuses an output that is the input image itself: it would be replaced by the result."""
    if image is None:  # not given: read_image names the flag
        return out
    out_path = os.path.normpath(os.path.abspath(out))  # a/../photo.png through a missing a
    if os.path.exists(out_path) and os.path.exists(image) and os.path.samefile(out_path, image):
        raise ValueError(f"{out_name}={out} is the input image ({image_name}={image}): writing "
                         "it would replace the photo; name another file.")
    return out


def write_image(path, image):
    """Writes a uint8 image, RGB (H, W, 3) or grey (H, W), whole or not at all (PNG by
    extension); ValueError naming the path if OpenCV cannot."""
    image = np.ascontiguousarray(image)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with rundir.whole_file(path) as partial:
        if not cv2.imwrite(partial, image if image.ndim == 2 else
                           cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise ValueError(f"could not write the image {path}.")
    return path
