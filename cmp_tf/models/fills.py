"""Guidance fills: dense maps computed from `sparse` (and, for the edge-aware fill, the image)
inside the model (beyond the paper).

A fill spreads the sparse vectors over the whole image on a grid of `stride` x `stride` cells
with pads, pools, fixed convolutions, slices, resizes, selects and element-wise ops only, so
it exports to TFLite and ONNX builtins. The propagation heads (`cmp_tf.models.heads`) feed
fills to the decoder and start their output from them. Every exported file computes them
itself; the int8 files keep them in float32.
"""
import functools
import math

import keras
import numpy as np
import tensorflow as tf


_CANDIDATES = 9  # a jump-flooding pass compares a cell with itself and its 8 neighbours
# The compact pass's candidates: the cell itself, then its neighbours in the sequential
# pass's order; a depthwise 3 x 3 kernel copies each of (y, x, u, v) from them (9 y, 9 x, 9 u,
# 9 v: TensorFlow's depthwise channel order), a priority (first candidate highest) breaks
# ties as the sequential pass does, and a 1 x 1 kernel sums each component's picked one.
_CANDIDATE_OFFSETS = [(0, 0)] + [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
_CANDIDATE_KERNEL = np.stack([np.pad([[1.0]], [[1 + dy, 1 - dy], [1 + dx, 1 - dx]])
                              for dy, dx in _CANDIDATE_OFFSETS], -1)[:, :, None].repeat(
                                  4, 2).astype(np.float32)  # [3, 3, 4, 9]
_CANDIDATE_PRIORITY = np.arange(_CANDIDATES, 0, -1).astype(np.float32)
_CANDIDATE_DY, _CANDIDATE_DX = np.array(_CANDIDATE_OFFSETS, np.float32).T
_PICKED_SUMS = np.kron(np.eye(4, dtype=np.float32), np.ones((_CANDIDATES, 1), np.float32))[
    None, None]


# `DensePrior._pooled`'s channels (mask, mask y, mask x, mask u, mask v): where the cell's
# origin row and column add to the sums.
_POOLED_CHANNELS = 5
_Y_CHANNEL = np.array([0, 1, 0, 0, 0], np.float32)
_X_CHANNEL = np.array([0, 0, 1, 0, 0], np.float32)
# masked_guidance's 1x1 kernel and bias: the multiplier (mask, mask, 1) of (u, v, mask).
_MASK_KERNEL = np.array([[[[0, 0, 0], [0, 0, 0], [1, 1, 0]]]], np.float32)
_MASK_BIAS = np.array([0, 0, 1], np.float32)


def masked_guidance(sparse):
    """(u x mask, v x mask, mask) of `sparse` [B, H, W, 3] float32: the vectors read only where
    guided. The multiplier comes from a 1x1 convolution, not a channel slice: on full-resolution
    maps LiteRT runs the convolution faster (0.4 against 0.9 ms at 384^2)."""
    multiplier = tf.nn.bias_add(tf.nn.conv2d(sparse, _MASK_KERNEL, 1, "VALID"), _MASK_BIAS)
    return sparse * multiplier


@functools.lru_cache(maxsize=None)
def _cell_sums_kernel(s):
    """[s, s, 3, 5] weights taking `masked_guidance` to the per-cell means of (mask, mask dy,
    mask dx, mask u, mask v), (dy, dx) the pixel's offset in its cell of `s` px."""
    kernel = np.zeros((s, s, 3, 5), np.float32)
    dy, dx = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    kernel[:, :, 2, 0], kernel[:, :, 2, 1], kernel[:, :, 2, 2] = 1.0, dy, dx
    kernel[:, :, 0, 3] = kernel[:, :, 1, 4] = 1.0
    return kernel / s**2


def copy_channels(x, columns, conv):
    """A map whose channel j is x's channel columns[j] (None: zeros), x [B, H, W, C] with C
    known when traced. `conv` computes it as one 1 x 1 convolution whose weights are one 1
    per copied channel, so the copies are exact: LiteRT runs channel slices and
    concatenations of large maps several times slower (two slices of a 192^2 x 3 map 0.3 ms,
    the two convolutions 0.05 ms). Else slices and a concatenation, the faster in TensorFlow
    and ONNX Runtime."""
    channels = x.shape[-1]
    columns = tuple(columns)
    if channels is None or not columns or any(
            c is not None and not 0 <= c < channels for c in columns):
        raise ValueError(f"copy_channels needs a known channel count and columns that are "
                         f"channels below it or None; got channels={channels}, "
                         f"columns={columns}.")
    if columns == tuple(range(channels)):
        return x
    if conv:
        return tf.nn.conv2d(x, _copy_kernel(channels, columns), 1, "VALID")
    parts, start = [], 0
    while start < len(columns):  # runs of consecutive channels, and of zeros
        stop = start + 1
        while stop < len(columns) and (
                columns[stop] is None if columns[start] is None
                else columns[stop] == columns[stop - 1] + 1):
            stop += 1
        if columns[start] is None:
            parts.append(tf.zeros_like(x[..., :1]) * tf.ones([stop - start]))
        elif (columns[start], columns[stop - 1]) == (0, channels - 1):
            parts.append(x)
        else:
            parts.append(x[..., columns[start]:columns[stop - 1] + 1])
        start = stop
    return parts[0] if len(parts) == 1 else tf.concat(parts, -1)


@functools.lru_cache(maxsize=None)
def _copy_kernel(channels, columns):
    """[1, 1, channels, len(columns)] weights of `copy_channels`."""
    kernel = np.zeros((1, 1, channels, len(columns)), np.float32)
    for j, c in enumerate(columns):
        if c is not None:
            kernel[0, 0, c, j] = 1.0
    return kernel


def take_channels(x, start, stop, conv):
    """x[..., start:stop] (`copy_channels`)."""
    return copy_channels(x, range(start, stop), conv)


def _positive(x):
    """1 where x > 0, 0 where x = 0, for x >= 0 (exact from 2^-60 up): x scaled by 2^60 in
    four exact steps of float16 constants, capped at 1. A comparison and a select in ops
    LiteRT's XNNPACK delegate runs: it runs neither, and each one split the graph."""
    for _ in range(4):
        x = x * 2.0**15
    return tf.minimum(x, 1.0)


def _first_minimum(values, priority):
    """(minimum [..., 1], one-hot [..., n] of the first channel that holds it) of `values`
    [..., n], `priority` decreasing whole numbers: the ties broken by arithmetic, which the
    exporters keep as builtins LiteRT's XNNPACK delegate runs (no argmin, no comparison)."""
    best = tf.reduce_min(values, -1, keepdims=True)
    score = (1.0 - _positive(values - best)) * priority  # whole numbers
    return best, tf.nn.relu(1.0 - (tf.reduce_max(score, -1, keepdims=True) - score))


def weighted_mean(sums, weight):
    """sums / weight where weight > 0, 0 where it is 0 (weight >= 0): a division by
    weight + 1 - [weight > 0], never by 0. A floor such as max(weight, 1e-12) becomes 0 / 0
    in float16 files, which round the floor to 0."""
    return sums / (weight + (1.0 - _positive(weight)))


def _doubled(x, litert_form=False):
    """Nearest-neighbour upsampling by 2 as four copies of the channels taken to space
    (depth_to_space): exact copies, and run by LiteRT's XNNPACK delegate, which does not take
    RESIZE_NEAREST_NEIGHBOR. `litert_form`: as `copy_channels`."""
    copies = copy_channels(x, list(range(x.shape[-1])) * 4, litert_form)
    return tf.nn.depth_to_space(copies, 2)


def _sizes(x, stride=1):
    """(H // stride, W // stride) of x [B, H, W, C]: ints where known when traced, else
    tensors."""
    shape = tf.shape(x)
    return tuple(n // stride if n is not None else shape[i] if stride == 1
                 else shape[i] // stride for i, n in zip((1, 2), x.shape[1:3]))


def _crop(x, height, width):
    """x[:, :height, :width]; x itself where the sizes are known when traced and already
    agree: the converters keep an identity slice as a copy of the map (0.1 ms at 192^2 in
    LiteRT)."""
    known = all(isinstance(n, int) for n in (height, width, *x.shape[1:3]))
    if known and tuple(x.shape[1:3]) == (height, width):
        return x
    return x[:, :height, :width]


def _crop_like(x, like):
    """`_crop` of x to the height and width of `like`."""
    return _crop(x, *_sizes(like))


def _end(margin):
    """Slice end that drops `margin` trailing elements (None keeps them all)."""
    return -margin if margin else None


class _GuidanceFill(keras.layers.Layer):
    """A fill of `sparse` on a grid of `stride` x `stride` cells with `channels` channels;
    `max_size` (px) bounds the passes when the image size is unknown at trace time.
    `litert_form` traces the same output in the ops LiteRT runs faster, as its exporter does:
    channels taken by 1 x 1 convolutions instead of slices and concatenations
    (`copy_channels`; the nearest and the local affine fill, whose slices act on large maps),
    and the compact nearest fill's neighbours zero-padded (`DensePrior._gather_pass`)."""

    channels = None

    def __init__(self, stride, max_size=2048, litert_form=False, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(litert_form, bool):
            raise ValueError(f"litert_form must be True or False; got {litert_form!r}.")
        self.stride, self.max_size, self.litert_form = int(stride), int(max_size), litert_form

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        return (b, None if h is None else h // self.stride,
                None if w is None else w // self.stride, self.channels)

    def get_config(self):
        return {**super().get_config(), "stride": self.stride, "max_size": self.max_size,
                "litert_form": self.litert_form}

    def _halvings(self, image_shape, cell):
        """How many times cells of `cell` px double before one spans the image (at least
        once): a pyramid's depth, a full jump flooding's passes; from `max_size` when the
        image size is unknown when traced."""
        size = None if None in image_shape else max(image_shape)
        return max(1, math.ceil(math.log2(max(1, (size or self.max_size) / cell))))


def _check_positive(field, value):
    """A layer option that must be a positive finite number, refused naming `field`."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
            or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{field} must be a positive number; got {value!r}.")


@keras.saving.register_keras_serializable(package="cmp_tf")
class DensePrior(_GuidanceFill):
    """Nearest-guidance fill of `sparse` on a grid of `stride` x `stride` cells (beyond the paper).

    Returns [B, H/stride, W/stride, 3]: (u, v) of the nearest guided cell and the distance in
    pixels from the cell centre to that cell's guides (their mean position). A cell holding
    several guides takes their mean vector. With no guidance at all the fill is zero flow at
    distance `max_size`. Computed by jump flooding (Rong & Tan, 2006): log2(size) passes of
    comparisons with the 8 neighbours at a distance, pads, slices and selects only, so it exports
    to TFLite and ONNX. A pass has two equal forms: eight sequential "strictly closer" selects
    (77 ops, the faster in TensorFlow), or one depthwise convolution that gathers the 9
    candidates and one first-minimum pick over them, its comparisons written as arithmetic
    (about 27 ops, all of which LiteRT's XNNPACK delegate runs: the faster in LiteRT, and
    TFLite's integer quantizer, which walks every op, finishes in seconds instead of not at
    all); `compact` picks the second, and export/tflite.py sets it while it converts.

    Two-level (`coarse_stride`): jump flooding runs in full on cells of `coarse_stride`
    pixels, where it is cheap, and the result, taken to the `stride` grid with the guided
    cells put back, is refined by passes at steps coarse_stride/stride/2, ..., 1, 1. Near the
    guides (within about coarse_stride pixels) it matches the one-level fill; farther away a
    cell may take the mean of the guides sharing a coarse cell instead of the nearest of them,
    and its Voronoi boundaries are those of the coarse cells' guides. Far fewer passes at the
    fine resolution: at stride 2 and 384^2, 3 levels take about half the time of one
    (benchmarks/inference.py prints the fills' time).

    Args:
        stride: cell size in input pixels (the resolution the fill is used at).
        max_size: the largest image side the fill must span, in pixels; used for the number
            of passes when the size is unknown when traced (exported models).
        compact: run each pass as one gather and pick (same output, fewer ops; faster in
            LiteRT, slower in TensorFlow).
        coarse_stride: 0 for the exact one-level fill; else the coarse level's cell size, a
            power-of-two multiple of `stride` (the image size need not be its multiple).
        refine: unit passes at each level finer than the coarse one (2, the default, as
            above). 0 takes the coarser level's choice of guide as it is, the distance still
            measured from each cell's own centre: no pass at the fine levels, where they cost
            most; the choice may differ from the nearest within about a coarse cell of the
            Voronoi boundaries.
        refine_finest: refine the finest level (`stride`) too. False takes the next level's
            choice there (its cells' own guides put back): 40% of the fill's time in LiteRT
            at stride 2 and 384^2, the choice off by about a cell near Voronoi boundaries.
        resize_finest: with refine_finest False, no work at the finest level at all: its
            cells take the next level's fill, resized (nearest neighbour). A cell then reads
            the mean of the guides in its 2 x 2 parent, and its distance is measured from the
            parent's centre (within stride / sqrt(2) px of its own); two thirds of the
            five-level fill's time in LiteRT at stride 2 and 384^2 was that level's
            element-wise work.
        coarse_output: also return the coarse level's fill, [fill at `stride`, fill at
            `coarse_stride`]: the same as a one-level DensePrior(coarse_stride) on images whose
            sides are multiples of coarse_stride (up to the rounding of mean positions),
            without flooding that grid a second time.
    """

    # Position of "no guide yet": farther than any pixel of images up to 16384 px, and a
    # float16 number: float16 files store constants as float16, where 1e6 became 65504 and
    # the squared half-distance that tells found from not, 2.5e11, became 65504 too (cells
    # over 256 px from every guide read as unguided).
    _FAR = 2.0**15
    channels = 3

    REFINE = 2

    def __init__(self, stride, max_size=2048, compact=False, coarse_stride=0, refine=REFINE,
                 coarse_output=False, refine_finest=True, resize_finest=False, **kwargs):
        super().__init__(stride, max_size, **kwargs)
        if not isinstance(compact, bool):
            raise ValueError(f"compact must be True or False; got {compact!r}.")
        self.compact = compact
        ratio = coarse_stride // self.stride if coarse_stride else 0
        if coarse_stride and (not isinstance(coarse_stride, int) or isinstance(coarse_stride, bool)
                              or ratio < 2 or ratio * self.stride != coarse_stride
                              or ratio & (ratio - 1)):
            raise ValueError(f"coarse_stride must be 0 (one level) or a power-of-two multiple "
                             f"(>= 2x) of stride={self.stride}; got {coarse_stride!r}.")
        if isinstance(refine, bool) or not isinstance(refine, (int, np.integer)) or refine < 0:
            raise ValueError(f"refine must be an integer >= 0; got {refine!r}.")
        if not isinstance(coarse_output, bool) or (coarse_output and not coarse_stride):
            raise ValueError(f"coarse_output must be True or False, and True only with a "
                             f"coarse_stride; got {coarse_output!r} with "
                             f"coarse_stride={coarse_stride!r}.")
        if not isinstance(refine_finest, bool):
            raise ValueError(f"refine_finest must be True or False; got {refine_finest!r}.")
        if not isinstance(resize_finest, bool) or resize_finest and (
                refine_finest or not coarse_stride):
            raise ValueError(f"resize_finest must be True or False, and True only with a "
                             f"coarse_stride and refine_finest=False; got {resize_finest!r} "
                             f"with coarse_stride={coarse_stride!r}, "
                             f"refine_finest={refine_finest!r}.")
        self.coarse_stride, self.refine = int(coarse_stride), int(refine)
        self.coarse_output = coarse_output
        self.refine_finest, self.resize_finest = refine_finest, resize_finest

    def compute_output_shape(self, input_shape):
        fine = super().compute_output_shape(input_shape)
        if not self.coarse_output:
            return fine
        b, h, w, _ = input_shape
        return [fine, (b, None if h is None else h // self.coarse_stride,
                       None if w is None else w // self.coarse_stride, self.channels)]

    def _pooled(self, guidance, s):
        """Per cell of `s` px: the fraction of guided pixels and the means of mask x (y, x, u,
        v), [B, H/s, W/s, 5], from `masked_guidance`. One strided convolution sums the cell
        (its weights hold the pixels' offsets in the cell) and the cells' origins are added at
        cell resolution: full-resolution element-wise work was the costliest part of a fill
        in LiteRT."""
        sums = tf.nn.conv2d(guidance, _cell_sums_kernel(s), s, "VALID")
        count = take_channels(sums, 0, 1, self.litert_form)
        oy = tf.cast(tf.range(tf.shape(sums)[1]) * s, tf.float32)[None, :, None, None]
        ox = tf.cast(tf.range(tf.shape(sums)[2]) * s, tf.float32)[None, None, :, None]
        # Broadcast from the count, not a constant map: the exporters would fold that into
        # the file (0.7 MB at 384^2).
        return sums + (count * oy) * _Y_CHANNEL + (count * ox) * _X_CHANNEL

    def _seeds(self, pooled):
        """(1 where guided else 0, the mean (y, x, u, v) of the cell's guides, else far) from
        `_pooled`."""
        count = take_channels(pooled, 0, 1, self.litert_form)
        seeded = _positive(count)
        seed = weighted_mean(take_channels(pooled, 1, 5, self.litert_form), count)
        return seeded, seed * seeded + self._far() * (1.0 - seeded)

    def _far(self):
        """The state (y, x, u, v) of a cell no guide has reached yet."""
        return tf.constant([self._FAR, self._FAR, 0.0, 0.0])

    def _level(self, pooled, s, image_shape):
        """((state, squared distance) of the fill on cells of `s` px from their `_pooled`
        sums, the same of the coarsest level): in full at the coarsest level, else the next
        coarser level's result (its cells pool 2 x 2 of these: 2 x 2 average pools keep the
        integer quantizer off the positions) taken to this grid, the cells' own guides put
        back, refined by `refine` unit passes."""
        seeded, state = self._seeds(pooled)
        if not self.coarse_stride or s >= self.coarse_stride:
            flooded = self._flood(state, s, image_shape)
            return flooded, flooded
        (coarse, _), coarsest = self._level(tf.nn.avg_pool2d(pooled, 2, 2, "VALID"), 2 * s,
                                            image_shape)
        up = _crop_like(_doubled(coarse, self.litert_form), state)
        passes = self.refine if self.refine_finest or s != self.stride else 0
        refined = self._flood(state * seeded + up * (1.0 - seeded), s, image_shape,
                              steps=(1,) * passes)
        return refined, coarsest

    def _fill(self, state, best):
        """(u, v, distance) from a level's (state, squared distance)."""
        dist = tf.sqrt(best)
        unfound = _positive(tf.nn.relu(dist - self._FAR / 2))  # a far state: (u, v) = 0
        dist = dist * (1.0 - unfound) + float(self.max_size) * unfound
        if self.litert_form:  # the concatenation as copies into place
            fill = (copy_channels(state, (2, 3, None), True)
                    + copy_channels(dist, (None, None, 0), True))
        else:
            fill = tf.concat([state[..., 2:], dist], -1)
        return tf.cast(fill, self.compute_dtype)

    def call(self, sparse):
        sparse = tf.cast(sparse, tf.float32)
        guidance = masked_guidance(sparse)
        height, width = _sizes(sparse, self.stride)
        finest = self.stride  # the finest level computed
        if self.resize_finest:  # the cells' 2 x 2 parents, an odd last row or column too
            finest = 2 * self.stride
            rows, cols = (None if n is None else n // self.stride % 2 for n in sparse.shape[1:3])
            if rows != 0 or cols != 0:  # a constant pad: the channel count stays known
                guidance = tf.pad(guidance, [[0, 0], [0, self.stride], [0, self.stride], [0, 0]])
        pooled = self._pooled(guidance, finest)
        if self.coarse_stride:  # whole coarse cells (unguided padding): any image size works
            # (cells padded, not pixels: padding by computed amounts loses the channel count,
            # which the convolutions need to be builtin ops in files with free H and W)
            ratio = self.coarse_stride // finest
            cells_h, cells_w = tf.shape(pooled)[1], tf.shape(pooled)[2]
            pooled = tf.pad(pooled, [[0, 0], [0, -cells_h % ratio], [0, -cells_w % ratio],
                                     [0, 0]])
            if self.litert_form and None in sparse.shape[1:3]:  # amounts computed when run
                # The converters lose the channel count of such a pad, and a convolution
                # needs it to be a builtin op (copy_channels): a reshape states it.
                pooled = tf.reshape(pooled, tf.concat([tf.shape(pooled)[:3],
                                                       [_POOLED_CHANNELS]], 0))
        (state, best), coarsest = self._level(pooled, finest, sparse.shape[1:3])
        if not self.coarse_stride:
            return self._fill(state, best)
        if self.resize_finest:
            parents = self._fill(state, best)
            fill = _crop(_doubled(parents, self.litert_form), height, width)
        else:
            fill = self._fill(_crop(state, height, width), _crop(best, height, width))
        if not self.coarse_output:
            return fill
        # Whole coarse cells only, as a one-level fill's strided pooling keeps.
        coarse_h = tf.shape(sparse)[1] // self.coarse_stride
        coarse_w = tf.shape(sparse)[2] // self.coarse_stride
        return [fill, self._fill(coarsest[0][:, :coarse_h, :coarse_w],
                                 coarsest[1][:, :coarse_h, :coarse_w])]

    def _flood(self, state, s, image_shape, steps=None):
        """Jump flooding of `state` [B, h, w, 4] (y, x, u, v) on cells of `s` px at `steps`
        (default: a full fill of the image); returns (state, squared distance)."""
        h, w = tf.shape(state)[1], tf.shape(state)[2]
        rows = tf.cast(tf.range(h), tf.float32)[None, :, None, None]
        cols = tf.cast(tf.range(w), tf.float32)[None, None, :, None]
        cy, cx = rows * s + (s - 1) / 2, cols * s + (s - 1) / 2

        def dist2(st):
            return tf.square(st[..., :1] - cy) + tf.square(st[..., 1:2] - cx)

        if steps is None:
            passes = self._halvings(image_shape, s)
            steps = [2**p for p in reversed(range(passes))] + [1]  # JFA+1: one more unit pass
        best = dist2(state)
        zero_padded = self.compact and self.litert_form
        if self.compact:
            # Ones of the state's size, for the frame of far states; or a 1 read from the
            # state, as the converters would fold the (beyond y, beyond x) maps' sums into
            # [h, w, 9] constants in the file.
            ones = (state[:, :1, :1, :1] if zero_padded else state[..., :1]) * 0.0 + 1.0
        for k in steps:
            pad = [[0, 0], [k, k], [k, k], [0, 0]]
            if zero_padded:  # see _gather_pass
                beyond = (self._beyond(rows, h, _CANDIDATE_DY * k) * ones,
                          self._beyond(cols, w, _CANDIDATE_DX * k) * ones)
                state, best = self._gather_pass(state, k, cy, cx, beyond, True)
                continue
            if self.compact:  # zero padding plus a frame of far states (no PADV2: XNNPACK)
                padded = tf.pad(state, pad) + (1.0 - tf.pad(ones, pad)) * self._far()
                state, best = self._gather_pass(padded, k, cy, cx, None, False)
                continue
            padded = tf.concat([tf.pad(state[..., :2], pad, constant_values=self._FAR),
                                tf.pad(state[..., 2:], pad)], -1)
            # Constant slice bounds (no tensor sizes) keep the channel count static for the
            # exporters' shape inference: the decoder's convs need it.
            others = [padded[:, k + dy:_end(k - dy), k + dx:_end(k - dx)]
                      for dy in (-k, 0, k) for dx in (-k, 0, k) if dy or dx]
            for other in others:
                other_d2 = dist2(other)
                closer = other_d2 < best
                state = tf.where(closer, other, state)
                best = tf.minimum(best, other_d2)
        return state, best

    @classmethod
    def _beyond(cls, index, size, offsets):
        """`_FAR` where the candidates at `offsets` (cells, [9]) from a cell of `index` (cells,
        [1, h, 1, 1] or [1, 1, w, 1]) lie outside 0..size - 1, else 0: whole numbers, so the
        test is exact in element-wise ops XNNPACK runs."""
        at = index + offsets
        outside = _positive(tf.nn.relu(-at)) + _positive(tf.nn.relu(at - tf.cast(size - 1,
                                                                                  tf.float32)))
        return outside * cls._FAR

    @staticmethod
    def _gather_pass(state, k, cy, cx, beyond, litert_form):
        """One pass over `state` as a gather of the cell and its 8 neighbours at k (a
        depthwise convolution dilated by k, whose sums hold one term each: exact copies) and a
        pick of the first closest, the cell's own state on ties, as the sequential "strictly
        closer" selects give. Returns (state, its squared distance).

        `beyond` None: `state` comes padded by k with far states. Else the neighbours beyond
        the image come zero-padded and are read (beyond y, beyond x) (`_beyond`: a far
        position once per axis they leave the image by) from where they are: never closer
        than the cell's own state, so never picked, as the frame's. LiteRT ran the frame's
        pads slower than the rest of the gather; ONNX Runtime runs this form slower (its
        converter writes a dilated convolution with zero padding as space-to-batch ops)."""
        padding = "VALID" if beyond is None else "SAME"
        candidates = tf.nn.depthwise_conv2d(state, _CANDIDATE_KERNEL, [1, 1, 1, 1], padding,
                                            dilations=[k, k])  # [B, h, w, 4 x 9]
        n = _CANDIDATES
        ys = take_channels(candidates, 0, n, litert_form)
        xs = take_channels(candidates, n, 2 * n, litert_form)
        if beyond is None:
            d2 = tf.square(ys - cy) + tf.square(xs - cx)
        else:
            beyond_y, beyond_x = beyond
            d2 = (tf.square(ys + (beyond_y - cy) + beyond_x)
                  + tf.square(xs + (beyond_x - cx) + beyond_y))
        best, pick = _first_minimum(d2, _CANDIDATE_PRIORITY)
        picks = copy_channels(pick, list(range(n)) * 4, litert_form)
        state = tf.nn.conv2d(candidates * picks, _PICKED_SUMS, 1, "VALID")
        return state, best

    def get_config(self):
        return {**super().get_config(), "compact": self.compact,
                "coarse_stride": self.coarse_stride, "refine": self.refine,
                "coarse_output": self.coarse_output, "refine_finest": self.refine_finest,
                "resize_finest": self.resize_finest}


@keras.saving.register_keras_serializable(package="cmp_tf")
class PullPushFill(_GuidanceFill):
    """Smooth fill of `sparse` on a grid of `stride` x `stride` cells, by pull-push (Gortler
    et al., 1996; beyond the paper): [B, H, W, 3] -> [B, H/stride, W/stride, 2] (u, v).

    Pull: a pyramid of 2x2 means of (vector x mask, mask). Push, coarse to fine: a cell holding
    guides takes their mean vector, any other cell the bilinear upsampling of the coarser level.
    Far from the guides the fill is therefore interpolated between them at the scale of their
    spacing, where the nearest fill is piecewise constant. Pools, resizes and selects only: it
    exports like DensePrior. No guidance gives zero flow.

    The box pull snaps each guide to the centre of its coarse cell, up to half the spacing of
    the guides away; `pull="tent"` weighs the 3x3 children 1-2-1 instead, and `relax` 3x3
    mean passes per level with the guided cells held fix the push's blockiness. On the unseen
    clip both bring the fill closer to linear interpolation (docs/ablation.md, "Gain profile,
    smoother fill, fixed weight").

    Args:
        stride, max_size: as DensePrior.
        pull: "box" (2x2 means) or "tent" (3x3 1-2-1 weights, stride 2).
        relax: 3x3 mean passes over the unguided cells after each push level.
    """

    channels = 2
    PULLS = ("box", "tent")
    # The tent pull's depthwise kernel over (u x mask, v x mask, mask): 1-2-1 x 1-2-1 / 16.
    _TENT = np.tile((np.outer([1, 2, 1], [1, 2, 1]) / 16).astype(np.float32)[:, :, None, None],
                    (1, 1, 3, 1))

    def __init__(self, stride, max_size=2048, pull="box", relax=0, **kwargs):
        super().__init__(stride, max_size, **kwargs)
        if pull not in self.PULLS:
            raise ValueError(f"pull must be one of {self.PULLS}; got {pull!r}.")
        if isinstance(relax, bool) or not isinstance(relax, (int, np.integer)) or relax < 0:
            raise ValueError(f"relax must be an integer >= 0; got {relax!r}.")
        self.pull, self.relax = pull, int(relax)

    def _coarser(self, cells):
        if self.pull == "box":
            return tf.nn.avg_pool2d(cells, 2, 2, "SAME")
        # Zero padding is harmless: weights and weighted vectors are padded alike.
        return tf.nn.depthwise_conv2d(cells, self._TENT, [1, 2, 2, 1], "SAME")

    def call(self, sparse):
        s = self.stride
        level = tf.nn.avg_pool2d(masked_guidance(tf.cast(sparse, tf.float32)), s, s, "VALID")
        pyramid = [level]
        for _ in range(self._halvings(sparse.shape[1:3], s)):
            pyramid.append(self._coarser(pyramid[-1]))

        def mean(cells):
            return weighted_mean(cells[..., :2], cells[..., 2:])

        fill = mean(pyramid[-1])
        for cells in reversed(pyramid[:-1]):
            up = tf.raw_ops.ResizeBilinear(images=fill, size=tf.shape(cells)[1:3],
                                           half_pixel_centers=True)
            guided, held = cells[..., 2:] > 0, mean(cells)
            fill = tf.where(guided, held, up)
            for _ in range(self.relax):  # SAME average pools leave the padding out of the mean
                fill = tf.where(guided, held, tf.nn.avg_pool2d(fill, 3, 1, "SAME"))
        return tf.cast(fill, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "pull": self.pull, "relax": self.relax}


# LocalAffineFill's 12 moment channels, (x, y) offsets in cells: of the mask (s0, sx, sy, sxx,
# sxy, syy), then of u x mask and v x mask (s, sx, sy) each. _MOMENT_ORDERS holds each
# channel's (source channel of masked_guidance, x power, y power).
_MOMENT_ORDERS = ((2, 0, 0), (2, 1, 0), (2, 0, 1), (2, 2, 0), (2, 1, 1), (2, 0, 2),
                  (0, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 0), (1, 1, 0), (1, 0, 1))


_MOMENT = {name: i for i, name in enumerate(
    ("s0", "sx", "sy", "sxx", "sxy", "syy", "su", "sux", "suy", "sv", "svx", "svy"))}
# A cell's guide count and vector sums: the moments the clamp's range and LocalAffineFill's
# residual_finest read.
_SUMS = ("s0", "su", "sv")
# The slopes' ridge is added to sxx and syy.
_RIDGE_CHANNELS = np.array([name in ("sxx", "syy") for name in _MOMENT], np.float32)
# Subtracted from the vectors of unguided cells, so that they are never a range's end (small
# enough for float16 files).
_UNGUIDED = 1e4


def _picks(*rows):
    """[1, 1, C, len(rows)] 1 x 1 convolution weights: output channel j sums the input
    channels rows[j] lists, with their signs ('-' before a name). Names are LocalAffineFill's
    moments (C = 12) or channel numbers as strings (C = the largest + 1)."""
    names = sorted({n.lstrip("-") for row in rows for n in row})
    index = _MOMENT if set(names) <= set(_MOMENT) else {n: int(n) for n in names}
    size = len(_MOMENT) if index is _MOMENT else 1 + max(index.values())
    kernel = np.zeros((1, 1, size, len(rows)), np.float32)
    for j, row in enumerate(rows):
        for name in row:
            kernel[0, 0, index[name.lstrip("-")], j] += -1.0 if name.startswith("-") else 1.0
    return kernel


@functools.lru_cache(maxsize=None)
def _fit_kernels():
    """The 1 x 1 convolutions of LocalAffineFill._fit: the two factors of the cofactors'
    products, their differences (c0, c1, c2), (s0, sx, sy), a sum of 3 channels, the
    vectors' moments (su, sux, suy, sv, svx, svy), (c0, c1, c2) twice, and sums of
    consecutive triples."""
    products = (("sxx", "syy"), ("sxy", "sxy"), ("sxy", "sy"), ("sx", "syy"), ("sx", "sxy"),
                ("sxx", "sy"))
    pick_a = _picks(*[(a,) for a, _ in products])
    pick_b = _picks(*[(b,) for _, b in products])
    cofactors = _picks(("0", "-1"), ("2", "-3"), ("4", "-5"))
    pick_s = _picks(("s0",), ("sx",), ("sy",))
    sum3 = _picks(("0", "1", "2"))
    pick_uv = _picks(*[(n,) for n in ("su", "sux", "suy", "sv", "svx", "svy")])
    tile = _picks(("0",), ("1",), ("2",), ("0",), ("1",), ("2",))
    pairs = _picks(("0", "1", "2"), ("3", "4", "5"))
    return pick_a, pick_b, cofactors, pick_s, sum3, pick_uv, tile, pairs


def _moment_shift(ox, oy, scale=1.0):
    """[12, 12] matrix M, moments about a point -> moments about a point (ox, oy) cells
    before it (a guide at offset d from the first lies at d + o from the second), in units
    `scale` times the old: out = in @ M. Exact for every order up to 2 (binomial expansion)."""
    matrix = np.zeros((12, 12), np.float64)
    index = {order: i for i, order in enumerate(_MOMENT_ORDERS)}
    for j, (source, px, py) in enumerate(_MOMENT_ORDERS):
        # (x + ox)^px (y + oy)^py = sum over a <= px, b <= py of C(px, a) C(py, b) x^a y^b ...
        for a in range(px + 1):
            for b in range(py + 1):
                coefficient = math.comb(px, a) * math.comb(py, b) * ox**(px - a) * oy**(py - b)
                matrix[index[(source, a, b)], j] += coefficient * scale**(px + py)
    return matrix


@functools.lru_cache(maxsize=None)
def _cell_moments_kernel(s):
    """[s, s, 3, 12] weights taking `masked_guidance` to each cell's moments (sums, not
    means) about the cell's centre, offsets in cells."""
    kernel = np.zeros((s, s, 3, 12), np.float32)
    offsets = (np.arange(s) - (s - 1) / 2) / s
    for j, (source, px, py) in enumerate(_MOMENT_ORDERS):
        kernel[:, :, source, j] = np.outer(offsets**py, offsets**px)
    return kernel


@functools.lru_cache(maxsize=None)
def _pool_moments_kernel():
    """[2, 2, 12, 12]: 2 x 2 cells' moments -> their parent's, about its centre, in its cells."""
    kernel = np.zeros((2, 2, 12, 12), np.float32)
    for ty in range(2):
        for tx in range(2):
            kernel[ty, tx] = _moment_shift(tx - 0.5, ty - 0.5, scale=0.5)
    return kernel


def _gaussian_taps(radius, sigma):
    """(offsets -radius..radius, their Gaussian weights of `sigma`, 1 at 0): LocalAffineFill's
    blur along one axis, in cells."""
    taps = np.arange(-radius, radius + 1)
    return taps, np.exp(-taps**2 / (2.0 * sigma * sigma))


@functools.lru_cache(maxsize=None)
def _blur_moments_kernels(radius, sigma):
    """([1, 2r + 1, 12, 12], [2r + 1, 1, 12, 12]): applied in turn, the moments of the cells
    around each cell, about its centre, weighed by a Gaussian of `sigma` cells of the
    distance between the centres. The Gaussian and the moments' shift both split into a
    shift along x and one along y: two passes of 2r + 1 taps instead of (2r + 1)^2."""
    taps, weights = _gaussian_taps(radius, sigma)
    along_x = np.stack([w * _moment_shift(o, 0) for o, w in zip(taps, weights)])
    along_y = np.stack([w * _moment_shift(0, o) for o, w in zip(taps, weights)])
    return along_x[None].astype(np.float32), along_y[:, None].astype(np.float32)


@keras.saving.register_keras_serializable(package="cmp_tf")
class LocalAffineFill(_GuidanceFill):
    """Smooth fill of `sparse` by local affine fits (moving least squares; beyond the paper):
    [B, H, W, 3] -> [B, H/stride, W/stride, 2] (u, v).

    At each cell, the affine motion that best fits the guides around it under Gaussian
    weights of their distance, read at the cell. The fits run on a pyramid: level l has
    cells of fit_stride x 2^l px and holds the exact moments (weight, position, position
    squared, vector, vector x position) of the guides in each cell about the cell's centre;
    a Gaussian of one cell (5 x 5 cells, in two passes that carry the moments to the cell's
    centre) weighs the cells around it, and a 3 x 3 solve per cell gives the fit. Coarse to
    fine, a level's fit replaces the coarser one in proportion to the guides it sees, s0 /
    (s0 + support), s0 their summed weights: where guides are dense the fine fits decide,
    where they are sparse the coarse ones, so the fit's scale follows the local spacing of
    the guides without being told their number. A ridge on the slopes keeps the solve defined
    with one or two guides (it then gives their weighted mean).

    Like pull-push it spreads the guides coarse to fine, but each level extrapolates the
    local slope of the motion instead of holding its mean: with the default small support
    the finest level that sees a guide decides, and on the unseen clip the fill alone is
    closer to the reference flow than pull-push, and than linear interpolation at every K
    from 5 on but 400 uniform guides, where they tie (docs/ablation.md). With a support of a
    few guides the fits span several guides and keep affine motion (a zoom, a rotation)
    exactly away from the border. Strided and plain convolutions, bilinear resizes and
    element-wise ops: it exports like the other fills. No guidance gives zero flow.

    Args:
        stride, max_size: as DensePrior.
        fit_stride: the finest fits' cell size in px, stride x a power of two: their
            Gaussian's sigma (the finest scale of the fill); default FIT_STRIDE, or stride if
            larger.
        support: summed guide weight at which a level's fit and the coarser one's weigh the
            same.
        ridge: the slopes' ridge, in guide weight x cells^2.
        clamp: keep each component within the guides' range (of their means per cell of
            `fit_stride`, the finest fits' cells), as pull-push and linear interpolation do:
            an extrapolated slope can otherwise overshoot every guide, which moves the
            largest motion that click annotation normalises by.
        residual_finest: with fit_stride > stride, each cell of `stride` adds to the fits,
            resized, a Gaussian mean of its guides' residuals from them (the fits' blur, over
            these cells), shrunk as a level's fit is: the fits' slope kept and each guide's
            vector met near it, from 3 channels at these cells instead of 12 moments and a
            solve. False: the fits resized alone.
    """

    channels = 2
    RADIUS, SIGMA = 2, 1.0  # the blur's radius and Gaussian sigma, in cells of its level

    FIT_STRIDE = 2

    def __init__(self, stride, max_size=2048, fit_stride=None, support=0.05, ridge=0.1,
                 clamp=True, residual_finest=False, **kwargs):
        super().__init__(stride, max_size, **kwargs)
        if fit_stride is None:
            fit_stride = max(self.FIT_STRIDE, self.stride)
        ratio = fit_stride // self.stride
        if isinstance(fit_stride, bool) or not isinstance(fit_stride, (int, np.integer)) \
                or ratio < 1 or ratio * self.stride != fit_stride or ratio & (ratio - 1):
            raise ValueError(f"fit_stride must be stride={self.stride} times a power of two; "
                             f"got {fit_stride!r}.")
        _check_positive("support", support)
        _check_positive("ridge", ridge)
        for name, value in (("clamp", clamp), ("residual_finest", residual_finest)):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False; got {value!r}.")
        if residual_finest and ratio == 1:
            raise ValueError(f"residual_finest=True corrects fits coarser than the output's "
                             f"cells: set fit_stride > stride={self.stride}; got fit_stride="
                             f"{fit_stride!r}.")
        self.fit_stride, self.support, self.ridge = int(fit_stride), float(support), float(ridge)
        self.clamp, self.residual_finest = clamp, residual_finest

    def _fit(self, moments):
        """((u, v) of each cell's weighted affine fit read at its centre, [B, h, w, 2]; the
        fit's confidence s0 / (s0 + support), [B, h, w, 1]) from the cells' moments.

        The 3 x 3 solve by the first row of the normal matrix's adjugate, written as a few
        multi-channel products: 1 x 1 convolutions pick and sum the channels (`_fit_kernels`),
        about a third of the ops of one slice per moment, which is what the solve costs at
        the coarse levels of the pyramid."""
        pick_a, pick_b, cofactors, pick_s, sum3, pick_uv, tile, pairs = _fit_kernels()
        ridge = tf.constant(_RIDGE_CHANNELS * self.ridge)
        moments = moments + ridge

        def conv(x, kernel):
            return tf.nn.conv2d(x, kernel, 1, "VALID")

        # (c0, c1, c2) = (sxx syy - sxy^2, sxy sy - sx syy, sx sxy - sxx sy)
        c = conv(conv(moments, pick_a) * conv(moments, pick_b), cofactors)
        s = conv(moments, pick_s)  # (s0, sx, sy)
        det = conv(s * c, sum3)  # > 0 where a guide reaches: a Gram matrix + ridge
        # Where none does every moment is 0, and so is the fit: 0 / 1 (weighted_mean, no
        # comparison and select, which split the file's XNNPACK graph at every level).
        fits = weighted_mean(conv(conv(moments, pick_uv) * conv(c, tile), pairs), tf.nn.relu(det))
        s0 = take_channels(s, 0, 1, self.litert_form)
        return fits, s0 / (s0 + self.support)

    def call(self, sparse):
        sparse = tf.cast(sparse, tf.float32)
        s = self.stride
        guidance = masked_guidance(sparse)
        if self.residual_finest:
            # The finest cells' (count, su, sv) alone; the fits' cells straight from the
            # guidance, the pixels past the finest cells left out as pooling leaves them.
            sums = [_MOMENT[name] for name in _SUMS]
            cells = tf.nn.conv2d(guidance, _cell_moments_kernel(s)[..., sums], s, "VALID")
            out_h, out_w = _sizes(cells)
            ratio = self.fit_stride // s
            if any(n is None or n % self.fit_stride for n in sparse.shape[1:3]):
                # zeros to whole fit cells: a pad of fixed amounts, then a crop (a pad of
                # amounts known only when run leaves the converter no channel count, and
                # LiteRT's builtin convolution needs one)
                guidance = tf.pad(guidance[:, :out_h * s, :out_w * s],
                                  [[0, 0], [0, self.fit_stride], [0, self.fit_stride], [0, 0]])
                guidance = guidance[:, :(out_h + -out_h % ratio) * s,
                                    :(out_w + -out_w % ratio) * s]
            # else whole fit cells already: the converters kept the identity slice, a copy of
            # the full-resolution guidance
            level = tf.nn.conv2d(guidance, _cell_moments_kernel(self.fit_stride),
                                 self.fit_stride, "VALID")
        else:
            level = tf.nn.conv2d(guidance, _cell_moments_kernel(s), s, "VALID")
            out_h, out_w = _sizes(level)
            for _ in range(int(math.log2(self.fit_stride // s))):  # zero padding: no guides
                level = tf.nn.conv2d(level, _pool_moments_kernel(), 2, "SAME")
        if self.clamp:  # the range read at the finest fits' cells
            fit_cells = tf.nn.conv2d(level, _picks(*[(n,) for n in _SUMS]), 1, "VALID")
        pyramid = [level]
        for _ in range(self._halvings(sparse.shape[1:3], self.fit_stride)):
            pyramid.append(tf.nn.conv2d(pyramid[-1], _pool_moments_kernel(), 2, "SAME"))
        along_x, along_y = _blur_moments_kernels(self.RADIUS, self.SIGMA)
        fill = None
        for level in reversed(pyramid):
            blurred = tf.nn.conv2d(tf.nn.conv2d(level, along_x, 1, "SAME"), along_y, 1, "SAME")
            fit, confidence = self._fit(blurred)
            if fill is not None:
                fill = fit * confidence + (1.0 - confidence) * _upsample(fill, level)
            else:
                fill = fit
        scale = self.fit_stride // s
        if scale > 1:
            fill = tf.raw_ops.ResizeBilinear(images=fill, size=scale * tf.shape(fill)[1:3],
                                             half_pixel_centers=True)
        fill = _crop(fill, out_h, out_w)
        if self.residual_finest:
            fill = fill + self._residual_mean(cells, fill)
        if self.clamp:
            low, high = _cell_guide_range(fit_cells, self.litert_form)
            fill = tf.minimum(tf.maximum(fill, low), high)
        return tf.cast(fill, self.compute_dtype)

    def _residual_mean(self, cells, fill):
        """The finest cells' Gaussian mean of their guides' residuals from `fill`, shrunk as a
        level's fit by s0 / (s0 + support): sum / (s0 + support), never a division by 0."""
        count = take_channels(cells, 0, 1, self.litert_form)
        if self.litert_form:  # the concatenation as a copy into place
            sums = cells - copy_channels(count * fill, (None, 0, 1), True)
        else:
            sums = tf.concat([count, cells[..., 1:] - count * fill], -1)
        _, weights = _gaussian_taps(self.RADIUS, self.SIGMA)
        along_x = np.tile(weights[None, :, None, None], (1, 1, 3, 1)).astype(np.float32)
        blurred = tf.nn.depthwise_conv2d(sums, along_x, [1] * 4, "SAME")
        blurred = tf.nn.depthwise_conv2d(blurred, along_x.transpose(1, 0, 2, 3), [1] * 4, "SAME")
        return (take_channels(blurred, 1, 3, self.litert_form)
                / (take_channels(blurred, 0, 1, self.litert_form) + self.support))

    def get_config(self):
        return {**super().get_config(), "fit_stride": self.fit_stride, "support": self.support,
                "ridge": self.ridge, "clamp": self.clamp, "residual_finest": self.residual_finest}


def _cell_guide_range(cells, litert_form=False):
    """(smallest, largest) (u, v) of the guided cells' mean vectors of each image, [B, 1, 1, 2]
    each, from the cells' (count, su, sv) [B, h, w, 3]; (0, 0) where nothing is guided.
    Within the guides' own range (a cell's guides averaged), and read at the cells: a
    reduction over every pixel cost more than the rest of the fill in LiteRT. A cell's count
    is its summed mask: its number of guided pixels for a mask of 0 and 1, any positive
    amount for other masks (a resized sparse map's 0.5): whether a cell is guided and its
    mean vector are `_positive` and `weighted_mean`, not min(count, 1) and max(count, 1),
    which took a cell of count 0.5 for half guided, its vectors less half of _UNGUIDED, the
    range's ends thousands of pixels below every guide (the same for masks of 0 and 1).
    `litert_form`: as `copy_channels`."""
    count = take_channels(cells, 0, 1, litert_form)
    guided = _positive(count)
    # One reduction for both ends: max of the vectors and max of their negatives.
    both = tf.nn.conv2d(cells, _picks(("1",), ("2",), ("-1",), ("-2",)), 1, "VALID")
    both = weighted_mean(both, count) - _UNGUIDED * (1.0 - guided)
    both = tf.reduce_max(both, [1, 2], keepdims=True)
    both = both * _positive(tf.nn.relu(both + _UNGUIDED / 2))  # nothing guided: 0
    return -both[..., 2:], both[..., :2]


def _upsample(coarse, fine):
    """Bilinear upsampling of `coarse` onto the grid of `fine`, whose cells pool 2 x 2 of
    coarse's from the top left (SAME-padded stride 2): 2x the size, then cropped."""
    up = tf.raw_ops.ResizeBilinear(images=coarse, size=2 * tf.shape(coarse)[1:3],
                                   half_pixel_centers=True)
    return _crop_like(up, fine)


def neighbours(x):
    """The 8 neighbours of every cell of x [B, h, w, C], border cells repeated: a list of
    [B, h, w, C] in NEIGHBOUR_OFFSETS order (pads by concatenation, then constant slices,
    which every exporter keeps static)."""
    x = tf.concat([x[:, :1], x, x[:, -1:]], 1)
    x = tf.concat([x[:, :, :1], x, x[:, :, -1:]], 2)
    return [x[:, 1 + dy:_end(1 - dy), 1 + dx:_end(1 - dx)] for dy, dx in NEIGHBOUR_OFFSETS]


NEIGHBOUR_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


@keras.saving.register_keras_serializable(package="cmp_tf")
class EdgeAwareFill(_GuidanceFill):
    """Edge-aware fill of `sparse` guided by the image, on a grid of `stride` x `stride` cells
    (beyond the paper): [sparse [B, H, W, 3], image [B, H, W, 3] RGB 0..255(, edge features
    [B, H/stride, W/stride, 1 + E])] -> [B, H/stride, W/stride, 2] (u, v).

    Pull-push (as PullPushFill) whose push reads the image: going from a coarse level to a
    finer one, a cell takes the mean of the 3 x 3 coarser cells around its parent weighed by
    how close their mean colour is to its own, exp(-|c - c'|^2 / (2 sigma^2)) (joint bilateral
    upsampling, Kopf et al. 2007), and `relax` passes then average each unguided cell with
    its 8 neighbours under the same colour weights, the guided cells held (an anchored
    edge-aware diffusion, as in colorization by optimization, Levin et al. 2004). Motion
    therefore spreads along regions of one colour and slows where the colour changes: where
    two guides' motions meet, the boundary moves to the image edge between them. Pads,
    pools, nearest resizes and element-wise ops only: it exports like the other fills.

    Edge features, when given (a network's output at the fill's cells), make the weights
    learned: channel 0 scales the colour term of the cell receiving motion by
    softplus(f0 + log(e - 1)) (1 at f0 = 0; near 0 it lets motion cross colour edges), and
    the distance between the cells' other E channels adds to it (it can stop motion where
    colour does not change):
        w = exp(-scale x |c - c'|^2 / (2 sigma^2) - |e - e'|^2).

    Args:
        stride, max_size: as DensePrior.
        sigma: colour distance (RGB scaled to 0..1, Euclidean) at which a neighbour's weight
            falls to exp(-1/2); large values give the plain box pull-push.
        relax: edge-aware 3x3 passes over the unguided cells after each push level.
        finest_relax: the passes at the finest level, the largest (default `relax`): fewer
            cost less where most of the time goes, the coarser levels having spread the
            motion already.
    """

    channels = 2
    _SCALE_START = math.log(math.e - 1.0)  # softplus of it is 1

    def __init__(self, stride, max_size=2048, sigma=0.1, relax=4, finest_relax=None, **kwargs):
        super().__init__(stride, max_size, **kwargs)
        _check_positive("sigma", sigma)
        finest_relax = relax if finest_relax is None else finest_relax
        for field, value in (("relax", relax), ("finest_relax", finest_relax)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{field} must be an integer >= 0; got {value!r}.")
        self.sigma, self.relax, self.finest_relax = float(sigma), int(relax), int(finest_relax)

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape(input_shape[0])

    def _logits(self, cell, others):
        """Log-weights [B, h, w, 1] between `cell` and each of `others`, all (colour scale, r,
        g, b, embedding...); the receiving cell's colour scale applies."""
        factor = -0.5 / self.sigma**2
        logits = []
        for other in others:
            square = tf.square(other[..., 1:] - cell[..., 1:])
            logit = factor * cell[..., :1] * tf.reduce_sum(square[..., :3], -1, keepdims=True)
            if square.shape[-1] > 3:
                logit -= tf.reduce_sum(square[..., 3:], -1, keepdims=True)
            logits.append(logit)
        return logits

    def call(self, inputs):
        sparse, image, *features = (tf.cast(x, tf.float32) for x in inputs)
        s = self.stride
        # Each level: (u x mask, v x mask, mask) and the cells' descriptor (colour scale, r, g,
        # b, embedding...), means per cell.
        level = tf.nn.avg_pool2d(tf.concat([masked_guidance(sparse), image / 255.0], -1),
                                 s, s, "VALID")
        if features:
            scale = tf.nn.softplus(features[0][..., :1] + self._SCALE_START)
            level = tf.concat([level[..., :3], scale, level[..., 3:], features[0][..., 1:]], -1)
        else:
            level = tf.concat([level[..., :3], tf.ones_like(level[..., :1]), level[..., 3:]], -1)
        pyramid = [level]
        for _ in range(self._halvings(sparse.shape[1:3], s)):
            pyramid.append(tf.nn.avg_pool2d(pyramid[-1], 2, 2, "SAME"))

        def mean(cells):
            return weighted_mean(cells[..., :2], cells[..., 2:3])

        # The coarse level's (u, v, descriptor) and its neighbours weigh 1, 1/2 (sides), 1/4
        # (corners) around a cell's parent before the descriptor weights.
        spatial = [0.5 ** (abs(dy) + abs(dx)) for dy, dx in NEIGHBOUR_OFFSETS]
        top = pyramid[-1]
        coarse = tf.concat([mean(top), top[..., 3:]], -1)
        for depth, cells in reversed(list(enumerate(pyramid[:-1]))):
            passes = self.finest_relax if depth == 0 else self.relax
            cell = cells[..., 3:]
            up = tf.raw_ops.ResizeNearestNeighbor(images=coarse, size=tf.shape(cells)[1:3],
                                                  half_pixel_centers=True)
            # A parent's neighbour is 2 cells away at this level: neighbours of neighbours.
            around = [up] + _two_away(up)
            logits = [logit + math.log(f) for logit, f in zip(
                self._logits(cell, [a[..., 2:] for a in around]), [1.0] + spatial)]
            # Relative to the largest, so that the weights never all underflow to zero.
            top_logit = functools.reduce(tf.maximum, logits)
            weights = [tf.exp(logit - top_logit) for logit in logits]
            fill = tf.add_n([w * a[..., :2] for w, a in zip(weights, around)]) / tf.add_n(weights)
            guided, held = cells[..., 2:3] > 0, mean(cells)
            fill = tf.where(guided, held, fill)
            if passes:
                near = [tf.exp(logit) for logit in self._logits(cell, neighbours(cell))]
                total = 1.0 + tf.add_n(near)  # the cell's own weight 1: never zero
                for _ in range(passes):
                    step = fill + tf.add_n([w * n for w, n in zip(near, neighbours(fill))])
                    fill = tf.where(guided, held, step / total)
            coarse = tf.concat([fill, cell], -1)
        return tf.cast(coarse[..., :2], self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "sigma": self.sigma, "relax": self.relax,
                "finest_relax": self.finest_relax}


def _two_away(x):
    """The 8 cells two steps away in NEIGHBOUR_OFFSETS directions, border cells repeated."""
    x = tf.concat([x[:, :1], x[:, :1], x, x[:, -1:], x[:, -1:]], 1)
    x = tf.concat([x[:, :, :1], x[:, :, :1], x, x[:, :, -1:], x[:, :, -1:]], 2)
    return [x[:, 2 + 2 * dy:_end(2 - 2 * dy), 2 + 2 * dx:_end(2 - 2 * dx)]
            for dy, dx in NEIGHBOUR_OFFSETS]


# A geodesic pass's candidates: the 8 neighbours in NEIGHBOUR_OFFSETS order. A depthwise 3 x 3
# kernel copies each channel from them (channel c's 8 neighbours at 8c..8c+7), another takes
# each neighbour's difference from the cell; the steps' lengths in cells; a priority (first
# neighbour highest) breaks ties.
_NEIGHBOURS = len(NEIGHBOUR_OFFSETS)
_NEIGHBOUR_STEPS = np.array([math.hypot(dy, dx) for dy, dx in NEIGHBOUR_OFFSETS], np.float32)
_NEIGHBOUR_PRIORITY = np.arange(_NEIGHBOURS, 0, -1).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _neighbour_kernel(channels, difference=False):
    """[3, 3, channels, 8] depthwise weights: each channel's 8 neighbours (zero beyond the
    map), or with `difference` each neighbour minus the cell."""
    kernel = np.zeros((3, 3, channels, _NEIGHBOURS), np.float32)
    for j, (dy, dx) in enumerate(NEIGHBOUR_OFFSETS):
        kernel[1 + dy, 1 + dx, :, j] = 1.0
        if difference:
            kernel[1, 1, :, j] = -1.0
    return kernel


@functools.lru_cache(maxsize=None)
def _component_sums(components):
    """[1, 1, 8 x components, components] weights summing each component's 8 channels."""
    return np.kron(np.eye(components, dtype=np.float32),
                   np.ones((_NEIGHBOURS, 1), np.float32))[None, None]


@functools.lru_cache(maxsize=None)
def _neighbour_sums():
    """[1, 1, 24, 8] weights summing the 3 colour channels' squared differences per neighbour
    (channel c's neighbour j at 8c + j)."""
    return np.tile(np.eye(_NEIGHBOURS, dtype=np.float32), (3, 1))[None, None]


@keras.saving.register_keras_serializable(package="cmp_tf")
class GeodesicNearestFill(_GuidanceFill):
    """The guide nearest along the image (beyond the paper): [sparse [B, H, W, 3], image
    [B, H, W, 3] RGB 0..255] -> [B, H/stride, W/stride, 2], the (u, v) of the guided cell with
    the shortest path to each cell, a step between neighbouring cells costing its length x
    (1 + colour_weight x |c - c'|), c the cells' mean colours (RGB in 0..1).

    The nearest fill (`DensePrior`) gives a cell the vector of the guide nearest in pixels,
    whatever lies between; here a colour edge on the way counts as a long way round, so near an
    object's border a cell follows the guide on its own side (the geodesic interpolation of
    EpicFlow, Revaud et al. 2015, with colour for the edge map). Computed coarse to fine: on
    cells of `coarse_stride` px as many passes as the grid has rows and columns (each pass
    takes, for every unguided cell, the neighbour whose path plus step costs least: Bellman-Ford
    in parallel), then at each finer level the coarser result taken over, the level's guided
    cells put back and `passes` passes to move the choice to the level's own edges. Depthwise
    convolutions, pools, reductions and element-wise ops only: it exports like the other fills.

    Args:
        stride, max_size: as DensePrior.
        coarse_stride: the coarsest level's cells, a power-of-two multiple of the finest's.
        passes: passes at each finer level: the distance in cells, from a coarse level's edge
            to the level's own, that the choice can move.
        colour_weight: what a unit of colour difference adds to a step, in steps.
        resize_finest: compute the finest level at 2 x stride and resize it (nearest): a
            quarter of the cells where the passes cost most.
    """

    channels = 2

    def __init__(self, stride, max_size=2048, coarse_stride=32, passes=6, colour_weight=100.0,
                 resize_finest=True, **kwargs):
        super().__init__(stride, max_size, **kwargs)
        _check_positive("colour_weight", colour_weight)
        if isinstance(passes, bool) or not isinstance(passes, (int, np.integer)) or passes < 0:
            raise ValueError(f"passes must be an integer >= 0; got {passes!r}.")
        if not isinstance(resize_finest, bool):
            raise ValueError(f"resize_finest must be True or False; got {resize_finest!r}.")
        finest = self.stride * (2 if resize_finest else 1)
        if isinstance(coarse_stride, bool) or not isinstance(coarse_stride, (int, np.integer)) \
                or coarse_stride < finest or coarse_stride & (coarse_stride - 1) \
                or coarse_stride % finest:
            raise ValueError(f"coarse_stride must be a power-of-two multiple of the finest "
                             f"level's cells ({finest} px); got {coarse_stride!r}.")
        self.coarse_stride, self.passes = int(coarse_stride), int(passes)
        self.colour_weight, self.resize_finest = float(colour_weight), resize_finest

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape(input_shape[0])

    def _costs(self, colour, s):
        """[B, h, w, 8]: the cost of the step to each neighbour of cells of `s` px, `_FAR`
        more for a neighbour beyond the map."""
        ones = colour[..., :1] * 0.0 + 1.0  # read from the input: no constant map to fold
        inside = tf.nn.depthwise_conv2d(ones, _neighbour_kernel(1), [1] * 4, "SAME")
        differences = tf.nn.depthwise_conv2d(colour, _neighbour_kernel(3, True), [1] * 4,
                                             "SAME")
        squares = tf.nn.conv2d(tf.square(differences), _neighbour_sums(), 1, "VALID")
        steps = _NEIGHBOUR_STEPS * s * (1.0 + self.colour_weight * tf.sqrt(squares + 1e-12))
        return steps + (1.0 - inside) * DensePrior._FAR

    def _relax(self, state, guided, held, costs, passes):
        """`passes` passes over state [B, h, w, 3] (path cost, u, v), the guided cells held."""
        for _ in range(passes):
            candidates = tf.nn.depthwise_conv2d(state, _neighbour_kernel(3), [1] * 4, "SAME")
            # the steps' costs added to the neighbours' path costs, not to their (u, v)
            candidates += copy_channels(costs, (*range(_NEIGHBOURS), *[None] * 2 * _NEIGHBOURS),
                                        self.litert_form)
            totals = take_channels(candidates, 0, _NEIGHBOURS, self.litert_form)
            _, pick = _first_minimum(totals, _NEIGHBOUR_PRIORITY)
            picks = copy_channels(pick, list(range(_NEIGHBOURS)) * 3, self.litert_form)
            step = tf.nn.conv2d(candidates * picks, _component_sums(3), 1, "VALID")
            state = held * guided + step * (1.0 - guided)
        return state

    def call(self, inputs):
        sparse, image = (tf.cast(x, tf.float32) for x in inputs)
        finest = self.stride * (2 if self.resize_finest else 1)
        # (u x mask, v x mask, mask, r, g, b) means per cell; SAME pools: partial cells too.
        cells = tf.nn.avg_pool2d(tf.concat([masked_guidance(sparse), image / 255.0], -1),
                                 finest, finest, "SAME")
        levels = [cells]
        for _ in range(int(math.log2(self.coarse_stride // finest))):
            levels.append(tf.nn.avg_pool2d(levels[-1], 2, 2, "SAME"))
        state = None
        for depth, cells in reversed(list(enumerate(levels))):
            count = take_channels(cells, 2, 3, self.litert_form)
            guided = _positive(count)
            held = copy_channels(weighted_mean(take_channels(cells, 0, 2, self.litert_form),
                                               count), (None, 0, 1), self.litert_form)
            costs = self._costs(take_channels(cells, 3, 6, self.litert_form), finest * 2**depth)
            if state is None:  # the coarsest level: unguided cells start far
                far = tf.constant([DensePrior._FAR, 0.0, 0.0])
                state = self._relax(held * guided + far * (1.0 - guided), guided, held, costs,
                                    self._coarse_passes(sparse.shape[1:3]))
            else:
                up = _crop_like(_doubled(state, self.litert_form), cells)
                state = self._relax(held * guided + up * (1.0 - guided), guided, held, costs,
                                    self.passes)
        fill = take_channels(state, 1, 3, self.litert_form)
        if self.resize_finest:
            fill = _doubled(fill, self.litert_form)
        return tf.cast(_crop(fill, *_sizes(sparse, self.stride)), self.compute_dtype)

    def _coarse_passes(self, image_shape):
        """Passes that carry a guide across the coarsest grid: its rows plus columns (from
        `max_size` when the image size is unknown when traced)."""
        if None in image_shape:
            return 2 * math.ceil(self.max_size / self.coarse_stride)
        return sum(math.ceil(n / self.coarse_stride) for n in image_shape)

    def get_config(self):
        return {**super().get_config(), "coarse_stride": self.coarse_stride,
                "passes": self.passes, "colour_weight": self.colour_weight,
                "resize_finest": self.resize_finest}


# Layers computing a fill of the guidance: full-integer exports keep them in
# float32 (their squared distances, exponentials and divisions do not quantize).
FILL_LAYERS = (DensePrior, PullPushFill, LocalAffineFill, EdgeAwareFill,
               GeodesicNearestFill)


def fill_spec(layer):
    """A fill layer as JSON (its kind and options)."""
    spec = {"layer": type(layer).__name__, "stride": layer.stride, "max_size": layer.max_size}
    if isinstance(layer, DensePrior) and layer.coarse_stride:
        spec.update(coarse_stride=layer.coarse_stride, refine=layer.refine,
                    refine_finest=layer.refine_finest, resize_finest=layer.resize_finest)
    elif isinstance(layer, PullPushFill):
        spec.update(pull=layer.pull, relax=layer.relax)
    elif isinstance(layer, LocalAffineFill):
        spec.update(fit_stride=layer.fit_stride, support=layer.support, ridge=layer.ridge,
                    clamp=layer.clamp, residual_finest=layer.residual_finest)
    elif isinstance(layer, EdgeAwareFill):
        spec.update(sigma=layer.sigma, relax=layer.relax, finest_relax=layer.finest_relax)
    elif isinstance(layer, GeodesicNearestFill):
        spec.update(coarse_stride=layer.coarse_stride, passes=layer.passes,
                    colour_weight=layer.colour_weight, resize_finest=layer.resize_finest)
    return spec


def fill_from_spec(spec, name=None):
    """The fill layer of `fill_spec`; specs without "layer" (older exports) are DensePriors."""
    spec = dict(spec)
    kinds = {cls.__name__: cls for cls in FILL_LAYERS}
    kind = spec.pop("layer", "DensePrior")
    if kind not in kinds:
        raise ValueError(f"Unknown guidance fill layer {kind!r}; known: {sorted(kinds)}.")
    return kinds[kind](**spec, name=name)
