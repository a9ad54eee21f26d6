"""A trained CMP behind one call: a few arrows on a photo in, the dense motion out.

    from cmp_tf.runtime import Propagator
    flow = Propagator().propagate(image, points, vectors)  # the shipped model; or a path:
    Propagator("runs/default"), Propagator("exported/model_int8.tflite"), ...

Applications, `evaluate.py` and outside code use this, never the network directly: it checks
the guidance, resizes the image to a size the network takes (scaling the guidance with it),
builds the sparse input and scales the answer back, so every caller gets H x W x 2 flow in its
own pixels for its own H x W image. The network may be in any format `python -m export`
writes: a `.keras` file or run directory, a SavedModel folder, a `.tflite` (LiteRT) or an
`.onnx` (ONNX Runtime). Each format's runner (`cmp_tf.runners`) does one thing, run the
network on float32 NHWC batches, so the resizing and scaling above exist once for all of them.
Running a `.tflite` or `.onnx` file needs NumPy, OpenCV and LiteRT or ONNX Runtime only: every
file computes its guidance fills itself, and nothing here imports TensorFlow or Keras for them.
"""
import math

import cv2
import numpy as np

from cmp_tf import runners
from cmp_tf.data import sampling
from cmp_tf.runners import INPUTS, METADATA_KEY, OUTPUT

BATCH = 8  # guidance sets per forward pass in propagate_batch, at most ...
BATCH_PIXELS = 8 * 512 * 512  # ... this many working pixels: 8 sets of 4K took 6 GB at once
MAX_ENLARGED_SIDE = 2048  # px: a small image is enlarged alike while its long side stays
#   within this (and the model's bounds); a longer one has its short side raised alone


class Network:
    """The CMP in any format as (image, sparse) -> flow on float32 NHWC batches it can take.

    Attributes:
        multiple, minimum: height and width must be multiples of `multiple`, at least `minimum`.
        maximum: the longest side its guidance fills span (a free-size graph plans their
            passes for it), None for no bound (no fills, or a file of earlier versions).
        size: (H, W) for a fixed-size file (TFLite), else None.
    """

    def __init__(self, path, threads=None):
        self.runner = runners.open_model(path, threads)
        self.path, self.format = self.runner.path, self.runner.format
        meta = self.runner.metadata
        if meta is None and self.format == "keras":
            raise ValueError(f"{self.path} is a Keras model but not a CMP (no input_guard layer).")
        if meta is None:
            raise ValueError(f"{self.path} has no {METADATA_KEY!r} metadata (stride multiple, "
                             "minimum size); export it with `python -m export`, which stores it "
                             "with every format.")
        try:
            self.multiple, self.minimum = int(meta["multiple"]), int(meta["minimum"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{self.path}: its {METADATA_KEY!r} metadata {meta} lacks "
                             f"'multiple' or 'minimum' ({error}).") from error
        if meta.get("priors"):  # earlier int8 files took their fills as extra inputs
            raise ValueError(f"{self.path} takes its guidance fills ({', '.join(meta['priors'])})"
                             " as inputs, as int8 files of earlier versions did; re-export it "
                             "with `python -m export`: files now compute them inside.")
        if set(self.runner.inputs) != set(INPUTS) or OUTPUT not in self.runner.outputs:
            raise ValueError(f"{self.path} takes {sorted(self.runner.inputs)} and returns "
                             f"{self.runner.outputs}; a CMP takes {sorted(INPUTS)} and returns "
                             f"{OUTPUT!r}.")
        maximum = meta.get("maximum")
        self.maximum = int(maximum) if sampling.is_int(maximum) and maximum > 0 else None
        shape = self.runner.inputs["image"]
        self.size = None if None in shape[1:3] else (shape[1], shape[2])

    def set_fade(self, fade):
        """Switches a Keras model's learned fade (`Propagator`'s `fade`); an exported file's
        is fixed, and only the value it was exported with is accepted."""
        if self.format == "keras":
            from cmp_tf.models import heads

            heads.set_fade(self.runner.model, fade)
            self.runner.retrace()
            return
        exported = (self.runner.metadata or {}).get("fade")
        if exported != fade:
            held = ("no learned fade" if exported is None else
                    f"fade={exported} (exported {'with' if not exported else 'without'} "
                    "--nofade)")
            raise ValueError(f"{self.path} holds {held}, fixed when it was exported; asked for "
                             f"fade={fade}. Export the model again with `python -m export "
                             f"--{'no' if not fade else ''}fade`, or load its .keras file.")

    def __call__(self, image, sparse):
        return self.runner({"image": image, "sparse": sparse})[OUTPUT]


class Propagator:
    """Sparse-to-dense motion with a trained CMP.

    Args:
        path: a run directory, a .keras, .tflite or .onnx file, or a SavedModel folder; None:
            the pretrained model that ships with cmp_tf (`rundir.PRETRAINED`).
        max_side: if > 0, images whose longer side exceeds it are shrunk for the network (and
            the flow scaled back): bounds time and memory on large photos. -1 keeps the size
            (up to rounding each side to the encoders' stride) up to the longest side the
            model's guidance fills span (2048 px for the shipped model; `max_input_side`),
            beyond which it shrinks too. A fixed-size file (TFLite) always runs at its own
            size: the image is scaled to fit inside it, its aspect kept, and the rest padded
            (`content_size`).
        threads: CPU threads for LiteRT and ONNX Runtime; None: their default.
        fade: False for footage from a moving camera: the learned fade of a guide's motion
            with distance, which still-camera footage teaches, is switched off, so motion far
            from the guides is what they say (`models.heads.set_fade`). A Keras model is
            switched here; an exported file holds the choice it was exported with (`python -m
            export --nofade`), and asking it for the other one is refused. None: as the
            model is.
    """

    def __init__(self, path=None, max_side=-1, threads=None, fade=None):
        check_max_side(max_side)
        if threads is not None and (not sampling.is_int(threads) or threads < 1):
            raise ValueError(f"threads must be None (the runtime's default) or a whole number "
                             f">= 1; got {threads!r}.")
        if fade is not None and not isinstance(fade, (bool, np.bool_)):
            raise ValueError(f"fade must be True, False or None; got {fade!r}.")
        fade = None if fade is None else bool(fade)
        self.max_side = int(max_side)
        self._network = Network(path, threads)
        if fade is not None:
            self._network.set_fade(fade)
        self.path, self.format = self._network.path, self._network.format
        self.multiple, self.minimum = self._network.multiple, self._network.minimum
        # The fills of a graph traced for any size span this much; a larger image is shrunk.
        maximum = self._network.maximum
        self.max_input_side = None if maximum is None else max(
            maximum // self.multiple * self.multiple, self.minimum, self.multiple)

    def __repr__(self):
        return f"Propagator({self.path!r}, max_side={self.max_side})"

    def propagate(self, image, points, vectors):
        """image uint8 H x W x 3 RGB, points K x 2 (x, y) px, vectors K x 2 (u, v) px ->
        flow float32 H x W x 2."""
        return self.propagate_batch(image, [(points, vectors)])[0]

    def propagate_batch(self, image, guidance):
        """Several guidance sets [(points, vectors), ...] on one image -> N x H x W x 2."""
        if not isinstance(guidance, (list, tuple)) or not all(
                isinstance(pair, (list, tuple)) and len(pair) == 2 for pair in guidance):
            raise ValueError(f"guidance must be a list of (points, vectors) pairs; got "
                             f"{type(guidance).__name__} {short_repr(guidance)}.")
        if not guidance:
            raise ValueError("guidance must hold at least one (points, vectors) pair; got none.")
        image = sampling.check_image(image)
        height, width = image.shape[:2]
        checked = []
        for index, (points, vectors) in enumerate(guidance):
            try:
                checked.append(sampling.check_points(points, vectors, height, width))
            except ValueError as error:  # which of many sets
                if len(guidance) == 1:
                    raise
                raise ValueError(f"guidance[{index}]: {error}") from None
        work_h, work_w = self.working_size(height, width)
        fit_h, fit_w = self.content_size(height, width)
        scale = np.array([fit_w / width, fit_h / height], np.float32)  # (x, y)
        work = image if (fit_h, fit_w) == (height, width) else cv2.resize(
            image, (fit_w, fit_h), interpolation=cv2.INTER_AREA if scale.max() < 1
            else cv2.INTER_LINEAR)
        if (fit_h, fit_w) != (work_h, work_w):  # a fixed-size file: the rest repeats the edge
            work = cv2.copyMakeBorder(work, 0, work_h - fit_h, 0, work_w - fit_w,
                                      cv2.BORDER_REPLICATE)
        sparse = []
        for points, vectors in checked:
            xy = working_pixels(points, (fit_w / width, fit_h / height), fit_h, fit_w)
            sparse.append(sampling.sparse_from_points(xy, vectors * scale, work_h, work_w))
        flows = []
        per_pass = max(1, min(BATCH, BATCH_PIXELS // (work_h * work_w)))
        for start in range(0, len(sparse), per_pass):
            chunk = np.stack(sparse[start:start + per_pass])
            images = np.repeat(work[None].astype(np.float32), len(chunk), axis=0)
            flows.append(self._network(images, chunk))
        flow = np.concatenate(flows).astype(np.float32)[:, :fit_h, :fit_w]
        if (fit_h, fit_w) != (height, width):
            flow = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR)
                             for f in flow]) / scale
        return np.ascontiguousarray(flow, np.float32)

    def warm_up(self):
        """Runs the network once on a blank image, so a service's first request is as fast as
        the rest (a Keras model traces its graph at its first call, about 2 s on 2 cores).
        Returns self."""
        side = max(self.minimum, self.multiple)
        self.propagate(np.zeros((side, side, 3), np.uint8), np.zeros((1, 2), np.float32),
                       np.zeros((1, 2), np.float32))
        return self

    def working_size(self, height, width):
        """The size the network runs at for an H x W image: a fixed-size file's own size, else
        within max_side and max_input_side, each side rounded to the nearest multiple of the
        encoders' stride, at least the model's minimum (a smaller image is enlarged, both sides
        alike where the bounds allow)."""
        for name, side in (("height", height), ("width", width)):
            if not sampling.is_int(side) or side < 1:
                raise ValueError(f"{name} must be a whole number of pixels >= 1; got {side!r}.")
        if self._network.size is not None:
            return self._network.size
        scale = 1.0
        bounds = [side for side in (self.max_side if self.max_side > 0 else None,
                                    self.max_input_side) if side is not None]
        if bounds and max(height, width) > min(bounds):
            scale = min(bounds) / max(height, width)
        smallest = max(self.minimum, self.multiple)
        enlarged = smallest / min(height, width)
        if scale < enlarged and max(height, width) * enlarged <= min(bounds + [MAX_ENLARGED_SIDE]):
            # Both sides enlarged alike: the short side raised to the minimum alone stretched
            # the image (64 x 128 ran at 128 x 128), and a guide's motion reached half as far
            # along it. An image too long for that within the bounds is still stretched.
            scale = enlarged

        def fit(side):  # halves up on both sides: round() takes them to even, one side up
            # and the other down (176 x 144 ran as 192 x 128, not 192 x 160)
            return max(self.minimum, self.multiple,
                       math.floor(side * scale / self.multiple + 0.5) * self.multiple)

        return fit(height), fit(width)

    def content_size(self, height, width):
        """The part of `working_size` an H x W image fills: all of it, but in a fixed-size
        file of another aspect, where the image is scaled to fit inside, its aspect kept, and
        the rest padded. Stretched to the file's shape instead, a guide's motion spread
        unevenly (the model's reach is the same in its x and y pixels): 18-25% more EPE on
        wide video with a square file."""
        work_h, work_w = self.working_size(height, width)
        if self._network.size is None:
            return work_h, work_w
        scale = min(work_h / height, work_w / width)
        return (min(work_h, max(1, round(height * scale))),
                min(work_w, max(1, round(width * scale))))


def working_pixels(points, scale, height, width):
    """Image points (x, y) [K, 2] -> the pixels (x, y) of the image resized by `scale` (sx, sy)
    to H x W that they land on: the pixel each point is on (`sampling.nearest_pixel`, as the
    guidance was checked), then the pixel its centre maps to as OpenCV's resize maps pixel
    centres, (p + 0.5) s - 0.5. A centre halfway between two pixels takes the one nearer the
    image's centre, so a mirrored photo gets mirrored guides: rounded up, every guide of an
    image enlarged twice went to the later pixel, a quarter of its pixel right and down."""
    at = (sampling.nearest_pixel(points) + 0.5) * np.asarray(scale, np.float64) - 0.5
    centre = (np.array([width, height], np.float64) - 1) / 2
    pixels = np.where(at <= centre, np.floor(at + 0.5), np.ceil(at - 0.5))
    return np.clip(pixels, 0, [width - 1, height - 1])


def check_max_side(max_side, name="max_side"):
    """`Propagator`'s max_side: -1 (full size) or a positive whole number of pixels."""
    if not sampling.is_int(max_side) or max_side == 0 or max_side < -1:
        raise ValueError(f"{name} must be -1 (full size) or a positive whole number of pixels; "
                         f"got {max_side!r}.")


def short_repr(value, limit=80):
    """repr(value), cut to `limit` characters for an error message."""
    return short_text(repr(value), limit)


def short_text(text, limit=80):
    """A text as an error message repeats it: at most `limit` characters."""
    return text if len(text) <= limit else text[:limit - 3] + "..."
