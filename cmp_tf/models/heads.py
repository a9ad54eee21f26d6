"""Propagation heads: how the decoder's output becomes flow, and what of the guidance it sees.

A head is a model part like the encoders and decoders, registered by name and chosen by a
recipe (`config.model.head`, options in `config.model.options.<name>`). It decides three
things the wiring (`cmp.assemble`) only plumbs through:
- which maps of `sparse` the decoder reads beside the image and sparse features
  (`prior_channels` of them, at the image features' stride);
- how many channels the decoder outputs (`decoder_channels`);
- how those channels become what the loss reads and the flow at the decoder's stride.
Each head checks the options and the loss it needs, so no other module holds rules about it.

Heads:
- `bins`: the paper's: 2 x nbins logits read out as the softmax expectation over bin centres;
  `nearest_prior` feeds the nearest-guidance fill to the decoder and starts the logits at that
  fill's bins (a Gaussian of `prior_sigma` px), so training learns a correction to it.
- `regression`: 2 channels of flow (L1 / L2 loss), optionally a correction to the nearest fill.
- `fill_correction`: a correction to a per-pixel blend of the nearest and a smooth fill (plain
  or edge-aware pull-push), scaled by a Gaussian gain of the distance to the guides
  (`BlendFills`): the shipped model's head.
- `affinity`: the `fill_correction` flow refined by learned spatial propagation.
"""
import abc

import keras
import tensorflow as tf

from cmp_tf import flow as flow_lib
from cmp_tf import registry
from cmp_tf.models import fills
from cmp_tf.models import layers as L


@keras.saving.register_keras_serializable(package="cmp_tf")
class FlowReadout(keras.layers.Layer):
    """Bin logits -> flow by the softmax expectation over bin centres (the reference's Fuser)."""

    def __init__(self, nbins, fmax, **kwargs):
        super().__init__(**kwargs)
        flow_lib.check_bins(nbins, fmax)
        self.nbins, self.fmax = int(nbins), float(fmax)

    def call(self, logits):
        return tf.cast(flow_lib.expected_flow(logits, self.nbins, self.fmax), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 2)

    def get_config(self):
        return {**super().get_config(), "nbins": self.nbins, "fmax": self.fmax}


@keras.saving.register_keras_serializable(package="cmp_tf")
class PriorLogits(keras.layers.Layer):
    """Bin logits of a Gaussian around a prior flow: added to the decoder's logits, the network
    starts from the prior's readout and learns a correction to it.

    Input [..., >=2] prior (u, v) in pixels; output [..., 2 * nbins], -(centre - prior)^2 / 2s^2.
    """

    def __init__(self, nbins, fmax, sigma, **kwargs):
        super().__init__(**kwargs)
        flow_lib.check_bins(nbins, fmax)
        if not sigma > 0:
            raise ValueError(f"config.model.options.bins.prior_sigma must be positive pixels; "
                             f"got {sigma!r}.")
        self.nbins, self.fmax, self.sigma = int(nbins), float(fmax), float(sigma)

    def call(self, prior):
        centers = tf.constant(flow_lib.bin_centers(self.nbins, self.fmax))
        prior = tf.cast(prior, tf.float32)
        scale = -0.5 / self.sigma**2
        x = scale * tf.square(centers - prior[..., :1])
        y = scale * tf.square(centers - prior[..., 1:2])
        return tf.cast(tf.concat([x, y], -1), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 2 * self.nbins)

    def get_config(self):
        return {**super().get_config(), "nbins": self.nbins, "fmax": self.fmax,
                "sigma": self.sigma}


@keras.saving.register_keras_serializable(package="cmp_tf")
class BlendFills(keras.layers.Layer):
    """[decoder output ([du, dv,] a[, r][, b][, g]), nearest fill, smooth fill[, edge-aware
    fill][, geodesic nearest fill]] -> flow (beyond the paper): gain x (sigmoid(a) x nearest +
    (1 - sigmoid(a)) x smooth) + (du, dv); with more fills, their weights are softmax(a, 0[, b]
    [, g]) in that order.

    The nearest fill is right inside a guided object up to its boundary, the smooth one between
    guides on one surface: the network learns per pixel which to trust, from the image, plus a
    correction. An untrained head (a = 0) reads out their mean, which is already closer to the
    reference flow than linear interpolation at 5 to 25 guides on unseen frames.

    With `gain`, a fourth channel r scales the blend by a Gaussian of d / s, d the distance to
    the nearest guide (the nearest fill's third channel) and s = sqrt(H W) the image's size
    (not its diagonal): exp(-(rate x d / s)^2 / 2), rate = GAUSSIAN_SCALE x softplus(r +
    GAUSSIAN_LOGIT_START), learned per pixel from the image: how far a guide's motion carries.
    Both fills copy a guide's vector all the way to the image border, though in real video what
    moves is mostly near where it is guided and the rest is still. The gain is 1 at a guide
    whatever r and flat near it, so dense guidance keeps its vectors; untrained (r = 0) it is a
    Gaussian of sigma s / 4 (docs/ablation.md, "Gain profile"). That fade is what
    footage from a still camera teaches; where the camera moves too every pixel moves, and
    `set_fade(model, False)` reads the blend out unscaled (a switch at use, not saved).

    Args:
        gain: read the reach r from the channel after a.
        stride: input pixels per cell of the fills (the image's size s is stride x sqrt(h w)).
        edge: blend a third fill, the edge-aware one, with the logit b; untrained (a = b = 0)
            the blend is the mean of the three.
        correction: add the free correction (du, dv), the first two channels. Without it the
            flow is the gain times the blend: the network only chooses between fills and how
            far they carry (docs/ablation.md, "The decoder at stride 4, and without the free
            correction").
        geodesic: blend the geodesic nearest fill too (fills.GeodesicNearestFill: the guide
            nearest along the image), the last input, with the logit g, the last channel.
    """

    GAUSSIAN_LOGIT_START = -0.4328  # softplus = 0.5: rate 4, sigma s / 4
    GAUSSIAN_SCALE = 8.0

    def __init__(self, gain=False, stride=1, edge=False, correction=True, geodesic=False,
                 **kwargs):
        super().__init__(**kwargs)
        for field, value in (("gain", gain), ("edge", edge), ("correction", correction),
                             ("geodesic", geodesic)):
            if not isinstance(value, bool):
                raise ValueError(f"{field} must be True or False; got {value!r}.")
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be an integer >= 1; got {stride!r}.")
        self.gain, self.stride, self.edge, self.correction = gain, stride, edge, correction
        self.geodesic = geodesic
        # The LiteRT exporter's form (export/savedmodel.py, `litert_form`): channels taken by
        # 1 x 1 convolutions, which LiteRT runs faster than slices (fills.copy_channels).
        self.litert_form = False
        # Whether the gain scales the blend (`set_fade`; not part of the saved config).
        self.fade = True

    @property
    def channels(self):
        """Decoder channels read: the correction (2, if any), the weight a, the reach r, the
        edge-aware fill's logit b, the geodesic nearest fill's logit g."""
        return 2 * self.correction + 1 + self.gain + self.edge + self.geodesic

    def call(self, inputs):
        out, nearest, smooth, *more = (tf.cast(x, tf.float32) for x in inputs)
        if len(more) != self.edge + self.geodesic:
            raise ValueError(f"BlendFills(edge={self.edge}, geodesic={self.geodesic}) blends "
                             f"{2 + self.edge + self.geodesic} fills; got {2 + len(more)}.")

        def take(x, start, stop):
            return fills.take_channels(x, start, stop, self.litert_form)

        first = 2 * self.correction  # the weight a's channel
        a = take(out, first, first + 1)
        if more:
            logits = [a, tf.zeros_like(a)]
            first_more = first + 1 + self.gain  # b's or g's channel
            logits += [take(out, first_more + i, first_more + i + 1) for i in range(len(more))]
            weights = tf.nn.softmax(tf.concat(logits, -1), axis=-1)
            fill = tf.add_n([take(weights, i, i + 1) * take(f, 0, 2)
                             for i, f in enumerate([nearest, smooth, *more])])
        else:
            weight = tf.sigmoid(a)
            fill = weight * take(nearest, 0, 2) + (1 - weight) * take(smooth, 0, 2)
        if self.gain and self.fade:
            reach = take(out, first + 1, first + 2)
            cells = tf.cast(tf.shape(nearest)[1] * tf.shape(nearest)[2], tf.float32)
            distance = take(nearest, 2, 3) / (self.stride * tf.sqrt(cells))
            rate = self.GAUSSIAN_SCALE * tf.nn.softplus(reach + self.GAUSSIAN_LOGIT_START)
            fill = tf.exp(-0.5 * tf.square(rate * distance)) * fill
        if self.correction:
            fill += out[..., :2]
        return tf.cast(fill, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (*input_shape[0][:-1], 2)

    def get_config(self):
        return {**super().get_config(), "gain": self.gain, "stride": self.stride,
                "edge": self.edge, "correction": self.correction, "geodesic": self.geodesic}

    # Fields of files saved by earlier versions, and the value this layer computes.
    _LEGACY = {"profile": "gaussian", "learn_weight": True}

    @classmethod
    def from_config(cls, config):
        """Reads files saved by earlier versions too, which stored the gain's profile and
        whether the weight was learned; only the Gaussian, learned-weight read-out remains."""
        config = dict(config)
        for field, kept in cls._LEGACY.items():
            value = config.pop(field, kept)
            if value != kept:
                raise ValueError(
                    f"This model's blend of fills has {field}={value!r}, an option later "
                    f"versions of cmp_tf removed (only {field}={kept!r} remains); load it with "
                    "cmp_tf at commit 83284d6, or retrain it.")
        return cls(**config)


def set_fade(model, fade):
    """Switches the learned fade (`BlendFills`' gain) of `model` on or off, in place: off, the
    flow is the blend of fills unscaled, for footage from a moving camera, where motion far
    from the guides is what they say rather than none (on a real stereo pair with true
    disparity the shipped model without its fade is ahead of every classical fill from 5 to
    100 guides and equal to the nearest fill with one, where with it it is behind the nearest
    fill at every K; docs/results.md).
    Takes effect at the next eager call or trace (the Keras runtime traces its graph again
    after a switch, `runtime.Network.set_fade`; exporters trace).
    Returns `model`."""
    if not isinstance(fade, bool):
        raise ValueError(f"fade must be True or False; got {fade!r}.")
    blends = _faded_blends(model)
    if not blends:
        raise ValueError(f"fade applies to models whose read-out learns how far a guide's motion "
                         f"carries (the fill_correction head with gain=True); "
                         f"{getattr(model, 'name', model)!r} has none.")
    for layer in blends:
        layer.fade = fade
    return model


def fade_of(model):
    """Whether `model`'s learned fade is on (`set_fade`); None for a model without one."""
    blends = _faded_blends(model)
    return all(layer.fade for layer in blends) if blends else None


def _faded_blends(model):
    """The BlendFills layers of `model` that hold a learned fade (a gain)."""
    return [layer for layer in getattr(model, "layers", ())
            if isinstance(layer, BlendFills) and layer.gain]


def _check_bool(head, field, value):
    if not isinstance(value, bool):
        raise ValueError(f"config.model.options.{head}.{field} must be True or False; "
                         f"got {value!r}.")


class Head(abc.ABC):
    """Base of the propagation heads: see the module docstring for the contract."""

    name = None
    LOSSES = ()  # config.flow.loss values this head's output trains with
    prior_channels = 0

    def __init__(self, nbins, fmax, loss):
        if loss not in self.LOSSES:
            raise ValueError(f"config.model.head={self.name!r} trains with config.flow.loss in "
                             f"{self.LOSSES}; got {loss!r}.")
        flow_lib.check_bins(nbins, fmax)
        self.nbins, self.fmax, self.loss = int(nbins), float(fmax), loss

    @property
    @abc.abstractmethod
    def decoder_channels(self):
        """Channels the decoder outputs for this head."""

    @abc.abstractmethod
    def attach(self, sparse, image, feature_stride, out_stride):
        """Wires the head on `sparse` [B, H, W, 3] (u, v, mask) and `image` [B, H, W, 3]
        (RGB 0..255, which fills that follow image edges read), for a decoder reading features
        at `feature_stride` and ending at `out_stride`.

        Returns:
            (maps of the guidance the decoder reads beside the image and sparse features,
             [B, H/feature_stride, W/feature_stride, C] with C summing to `prior_channels`;
             read_out(decoder output) -> (what the loss reads, flow [B, h, w, 2] in pixels
             at out_stride)).
        """


class _NearestPrior(Head):
    """A head that may feed the decoder the nearest-guidance fill and start from it.

    `nearest_levels` > 0 computes the fill at the output's stride on two or more levels
    (fills.DensePrior's `coarse_stride` = stride x 2^nearest_levels): about half the time at
    2 levels more, the same fill near the guides; `nearest_refine` sets its unit passes per
    finer level (fills.DensePrior's `refine`). With as many levels as take the output's
    stride to the features' (4 from stride 2 to 32), the decoder's input fill is the output
    fill's coarsest level, flooded once (3.4 ms less for the fills alone at 384^2 in LiteRT,
    1.3-1.6 ms less for the whole float32 file, docs/ablation.md)."""

    MAX_NEAREST_LEVELS = 6

    def __init__(self, nbins, fmax, loss, nearest_prior, nearest_levels=0,
                 nearest_refine=fills.DensePrior.REFINE, nearest_refine_finest=True,
                 nearest_resize_finest=False):
        super().__init__(nbins, fmax, loss)
        _check_bool(self.name, "nearest_prior", nearest_prior)
        if isinstance(nearest_levels, bool) or not isinstance(nearest_levels, int) \
                or not 0 <= nearest_levels <= self.MAX_NEAREST_LEVELS:
            raise ValueError(f"config.model.options.{self.name}.nearest_levels must be an "
                             f"integer in [0, {self.MAX_NEAREST_LEVELS}]; got "
                             f"{nearest_levels!r}.")
        try:
            fills.DensePrior(1, refine=nearest_refine, refine_finest=nearest_refine_finest)
        except ValueError as e:
            raise ValueError(f"config.model.options.{self.name}.nearest_{e}") from e
        _check_bool(self.name, "nearest_resize_finest", nearest_resize_finest)
        if nearest_resize_finest and (nearest_refine_finest or not nearest_levels):
            raise ValueError(f"config.model.options.{self.name}.nearest_resize_finest=True "
                             f"resizes the next level's fill: set nearest_levels >= 1 and "
                             f"nearest_refine_finest=False too; got nearest_levels="
                             f"{nearest_levels!r}, nearest_refine_finest="
                             f"{nearest_refine_finest!r}.")
        self.nearest_prior, self.nearest_levels = nearest_prior, nearest_levels
        self.nearest_refine, self.nearest_refine_finest = nearest_refine, nearest_refine_finest
        self.nearest_resize_finest = nearest_resize_finest

    @property
    def prior_channels(self):
        return fills.DensePrior.channels if self.nearest_prior else 0

    def _nearest(self, sparse, feature_stride, out_stride):
        """(decoder inputs, the nearest fill at out_stride [B, h, w, 3] (u, v, distance)). When
        the output's fill runs on levels whose coarsest is the features' stride, one layer
        gives both fills (that grid is flooded once); else the fill at the features' stride
        is its own one-level layer."""
        levels = out_stride * 2**self.nearest_levels if self.nearest_levels else 0
        if out_stride == feature_stride:
            coarse = fine = fills.DensePrior(feature_stride, name="dense_prior")(sparse)
        elif levels == feature_stride:
            fine, coarse = fills.DensePrior(out_stride, coarse_stride=levels,
                                            refine=self.nearest_refine, coarse_output=True,
                                            refine_finest=self.nearest_refine_finest,
                                            resize_finest=self.nearest_resize_finest,
                                            name="dense_prior")(sparse)
        else:
            coarse = fills.DensePrior(feature_stride, name="dense_prior")(sparse)
            fine = fills.DensePrior(out_stride, coarse_stride=levels, refine=self.nearest_refine,
                                    refine_finest=self.nearest_refine_finest,
                                    resize_finest=self.nearest_resize_finest,
                                    name="dense_prior_out")(sparse)
        scaled = keras.layers.Rescaling(1.0 / self.fmax, name="dense_prior_scale")(coarse)
        return [scaled], fine


@registry.register("head", "bins")
class Bins(_NearestPrior):
    """The paper's head: 2 x nbins logits (x bins, then y bins), flow by their expectation.

    Args:
        nearest_prior: feed the decoder the nearest-guidance fill and add a Gaussian of
            `prior_sigma` px around it to the logits (beyond the paper; the mobile and CPU
            recipes).
        prior_sigma: width of that Gaussian, pixels.
        nearest_levels, nearest_refine: the nearest fill at the output's stride
            (fill_correction's options).
    """

    name = "bins"
    LOSSES = ("discrete",)

    def __init__(self, nbins, fmax, loss, nearest_prior=False, prior_sigma=2.0,
                 nearest_levels=0, nearest_refine=fills.DensePrior.REFINE):
        super().__init__(nbins, fmax, loss, nearest_prior, nearest_levels, nearest_refine)
        if isinstance(prior_sigma, bool) or not (isinstance(prior_sigma, (int, float))
                                                 and prior_sigma > 0):
            raise ValueError("config.model.options.bins.prior_sigma must be positive pixels; "
                             f"got {prior_sigma!r}.")
        self.prior_sigma = float(prior_sigma)

    @property
    def decoder_channels(self):
        return 2 * self.nbins

    def attach(self, sparse, image, feature_stride, out_stride):
        inputs, nearest = (self._nearest(sparse, feature_stride, out_stride)
                           if self.nearest_prior else ([], None))

        def read_out(out):
            if self.nearest_prior:
                prior = PriorLogits(self.nbins, self.fmax, self.prior_sigma,
                                    name="prior_logits")(nearest)
                out = keras.layers.Add(name="add_prior")([out, prior])
            return out, FlowReadout(self.nbins, self.fmax, name="readout")(out)

        return inputs, read_out


@registry.register("head", "regression")
class Regression(_NearestPrior):
    """Two channels of flow in pixels, trained by L1 or L2 regression.

    Args:
        nearest_prior: feed the decoder the nearest-guidance fill and add it to the output.
        nearest_levels, nearest_refine: the nearest fill at the output's stride
            (fill_correction's options).
    """

    name = "regression"
    LOSSES = ("l1", "l2")
    decoder_channels = 2

    def __init__(self, nbins, fmax, loss, nearest_prior=False, nearest_levels=0,
                 nearest_refine=fills.DensePrior.REFINE):
        super().__init__(nbins, fmax, loss, nearest_prior, nearest_levels, nearest_refine)

    def attach(self, sparse, image, feature_stride, out_stride):
        inputs, nearest = (self._nearest(sparse, feature_stride, out_stride)
                           if self.nearest_prior else ([], None))

        def read_out(out):
            if self.nearest_prior:
                out = keras.layers.Add(name="add_prior")([out, nearest[..., :2]])
            return out, out

        return inputs, read_out


@registry.register("head", "fill_correction")
class FillCorrection(_NearestPrior):
    """A correction to a learned blend of the nearest and the smooth fill, scaled by a learned
    Gaussian gain of the distance to the guides (`BlendFills`): the shipped model's head.

    Args:
        gain: scale the blend by the gain (a fourth decoder channel, the reach).
        smooth: the smooth fill: "pull_push" (fills.PullPushFill, by distance alone),
            "local_affine" (fills.LocalAffineFill: local affine fits to the guides on a
            pyramid, which extrapolate the local slope of the motion where pull-push holds
            its mean),
            "edge_aware" (fills.EdgeAwareFill: its push and relaxation weigh cells by colour,
            so motion spreads along regions of one colour and stops at image edges), or
            "both" (three fills blended: nearest, pull-push, edge-aware).
        pull: the pull-push fill's pull (fills.PullPushFill).
        relax: the smooth fill's relaxation passes per level.
        sigma: the edge-aware fill's colour distance (RGB in 0..1) of weight exp(-1/2).
        finest_relax: the edge-aware fill's relaxation passes at its finest level (the
            costliest; measured, they change its EPE by under 2%).
        edge_features: decoder channels that shape the edge-aware fill's weights (0: colour
            alone): a per-cell scale of the colour term, and the rest an embedding whose
            distances add to it (fills.EdgeAwareFill), so the network learns which edges
            stop motion.
        nearest_levels: 0 for the exact nearest fill at the output's stride; n > 0 for its
            (n + 1)-level form (fills.DensePrior, coarse_stride = stride x 2^n): faster (about
            half the time at n = 2), the same vectors near the guides.
        nearest_refine: unit passes at each finer level of that form (fills.DensePrior's
            `refine`): 1 runs half the passes of 2 where the cells are finest, and the
            shipped model scores the same with either (docs/ablation.md).
        nearest_refine_finest: those passes at the output's own cells too (fills.DensePrior's
            `refine_finest`); False takes the next level's choice there, the costliest pass
            saved, within 0.001 in relative EPE on the shipped weights (docs/ablation.md).
        nearest_resize_finest: with nearest_refine_finest False, the output's cells take the
            next level's fill resized (fills.DensePrior's `resize_finest`): no work at the
            finest cells, the distance within stride / sqrt(2) px.
        local_affine_residual_finest: the local affine fill's fits stop at twice the fills'
            cells, which take them resized plus a Gaussian mean of their own guides'
            residuals (fills.LocalAffineFill's `residual_finest`): 3 channels at the finest
            cells instead of 12 moments and a solve.
        correction: add the decoder's free correction (du, dv) to the blend (`BlendFills`).
        fill_stride: the fills' and the blend's stride, finer than the decoder's (0: the
            decoder's). The decoder's channels are resized to the fills' cells: a decoder
            that ends at stride 4 reads out fills on 2 px cells, which keep dense guidance.
        geodesic: blend a third fill, the vectors of the guide nearest along the image
            (fills.GeodesicNearestFill, coarsest level at the features' stride, finest at
            twice the fills' cells, resized), where a colour edge on the way is a long way
            round, with its own learned weight (`BlendFills`' g).
        geodesic_colour_weight, geodesic_passes: that fill's `colour_weight` and `passes`.
    """

    name = "fill_correction"
    LOSSES = ("l1", "l2")
    SMOOTH_FILLS = ("pull_push", "local_affine", "edge_aware", "both")

    def __init__(self, nbins, fmax, loss, gain=True, smooth="pull_push", pull="tent", relax=4,
                 sigma=0.1, finest_relax=0, edge_features=0, nearest_levels=0,
                 nearest_refine=fills.DensePrior.REFINE, nearest_refine_finest=True,
                 correction=True, fill_stride=0, nearest_resize_finest=False,
                 local_affine_residual_finest=False, geodesic=False,
                 geodesic_colour_weight=100.0, geodesic_passes=6):
        super().__init__(nbins, fmax, loss, nearest_prior=True, nearest_levels=nearest_levels,
                         nearest_refine=nearest_refine,
                         nearest_refine_finest=nearest_refine_finest,
                         nearest_resize_finest=nearest_resize_finest)
        _check_bool(self.name, "gain", gain)
        _check_bool(self.name, "correction", correction)
        if isinstance(fill_stride, bool) or fill_stride not in (0, 1, 2, 4, 8, 16):
            raise ValueError(f"config.model.options.{self.name}.fill_stride must be 0 (the "
                             f"decoder's stride) or a power of two up to 16; got "
                             f"{fill_stride!r}.")
        if smooth not in self.SMOOTH_FILLS:
            raise ValueError(f"config.model.options.{self.name}.smooth must be one of "
                             f"{self.SMOOTH_FILLS}; got {smooth!r}.")
        try:
            fills.PullPushFill(1, pull=pull, relax=relax)
            fills.EdgeAwareFill(1, sigma=sigma, relax=relax, finest_relax=finest_relax)
        except ValueError as e:
            raise ValueError(f"config.model.options.{self.name}: {e}") from e
        if isinstance(edge_features, bool) or not isinstance(edge_features, int) \
                or edge_features < 0:
            raise ValueError(f"config.model.options.{self.name}.edge_features must be an "
                             f"integer >= 0; got {edge_features!r}.")
        if edge_features and smooth not in ("edge_aware", "both"):
            raise ValueError(f"config.model.options.{self.name}.edge_features={edge_features} "
                             "shapes the edge-aware fill: set smooth='edge_aware' or 'both' "
                             "too, or 0.")
        _check_bool(self.name, "local_affine_residual_finest", local_affine_residual_finest)
        if local_affine_residual_finest and smooth != "local_affine":
            raise ValueError(f"config.model.options.{self.name}.local_affine_residual_finest="
                             f"True changes the local affine fill: set smooth='local_affine', "
                             f"or it False; got smooth={smooth!r}.")
        self.local_affine_residual_finest = local_affine_residual_finest
        _check_bool(self.name, "geodesic", geodesic)
        try:
            fills.GeodesicNearestFill(1, coarse_stride=2, colour_weight=geodesic_colour_weight,
                                      passes=geodesic_passes)
        except ValueError as e:
            raise ValueError(f"config.model.options.{self.name}.geodesic_{e}") from e
        self.geodesic, self.geodesic_colour_weight = geodesic, geodesic_colour_weight
        self.geodesic_passes = geodesic_passes
        self.gain, self.smooth, self.pull, self.relax = gain, smooth, pull, relax
        self.sigma, self.finest_relax = float(sigma), finest_relax
        self.edge_features, self.correction = edge_features, correction
        self.fill_stride = fill_stride

    def _blend(self, stride=1):
        return BlendFills(self.gain, stride, edge=self.smooth == "both",
                          correction=self.correction, geodesic=self.geodesic, name="add_prior")

    @property
    def decoder_channels(self):
        return self._blend().channels + self.edge_features

    def _blend_fills(self, sparse, image, out, stride, feature_stride):
        """The nearest fill's output passed in, the blend's fills after it at `stride`, and
        the blend: (nearest [B, h, w, 3], list of fills, BlendFills); `out` the decoder's
        output, whose channels after the blend's are the edge features; the geodesic fill's
        coarsest cells are the features' (`feature_stride`), or its finest if coarser."""
        made = []
        if self.smooth in ("pull_push", "both"):
            made.append(fills.PullPushFill(stride, pull=self.pull, relax=self.relax,
                                           name="pull_push_out")(sparse))
        if self.smooth == "local_affine":
            residual = dict(fit_stride=2 * stride, residual_finest=True) \
                if self.local_affine_residual_finest else {}
            made.append(fills.LocalAffineFill(stride, **residual, name="local_affine_out")(sparse))
        if self.smooth in ("edge_aware", "both"):
            first = self._blend().channels
            features = [out[..., first:first + self.edge_features]] if self.edge_features else []
            made.append(fills.EdgeAwareFill(stride, sigma=self.sigma, relax=self.relax,
                                            finest_relax=self.finest_relax,
                                            name="edge_aware_out")([sparse, image, *features]))
        if self.geodesic:
            made.append(fills.GeodesicNearestFill(
                stride, coarse_stride=max(feature_stride, 2 * stride),
                passes=self.geodesic_passes,
                colour_weight=self.geodesic_colour_weight, name="geodesic_out")([sparse, image]))
        return made, self._blend(stride)

    def attach(self, sparse, image, feature_stride, out_stride):
        fill_stride = self.fill_stride or out_stride
        if out_stride % fill_stride:
            raise ValueError(f"config.model.options.{self.name}.fill_stride={fill_stride} must "
                             f"divide the decoder's stride {out_stride}.")
        inputs, prior = self._nearest(sparse, feature_stride, fill_stride)

        def read_out(out):
            if fill_stride != out_stride:
                out = L.ResizeLike(name="decoder_to_fills")([out, prior])
            made, blend = self._blend_fills(sparse, image, out, fill_stride, feature_stride)
            out = blend([out, prior, *made])
            return out, out

        return inputs, read_out


@keras.saving.register_keras_serializable(package="cmp_tf")
class AffinityPropagation(keras.layers.Layer):
    """[decoder output, seed flow, nearest fill, sparse] -> flow by learned spatial propagation
    (beyond the paper; CSPN, Cheng et al. 2018, and NLSPN, Park et al. 2020, for depth
    completion). Without the nearest fill ([out, seed, sparse]) the guided vectors are pooled
    from `sparse` (see `guidance`).

    Every step replaces each cell's flow by a convex combination of itself and its 8
    neighbours, with weights the decoder predicts from the image, then puts the guidance back
    at the guided cells:
        flow <- w_0 x flow + sum_n w_n x shift_n(flow);  flow <- guidance where guided.
    w = softmax over (SELF logit, the 8 neighbour logits), so the weights are positive and sum
    to one: each step is a weighted mean, stable whatever the decoder outputs (CSPN divides
    by the sum of |a_n| and may go negative; a softmax keeps the update convex and smooth at
    zero logits). A neighbour with a much lower logit than the others gets no weight: an
    edge the network sees can stop motion crossing it, which neither fill can.

    Neighbour n of a cell at (y, x) is the cell at (y + dy_n, x + dx_n), OFFSETS[n]; the image
    edge repeats its border cells. Shifts are pads and slices, the weights a softmax: it
    exports to TFLite and ONNX builtins.

    Args:
        offset: the first of the 8 affinity logits among the decoder output's channels.
        iterations: propagation steps (each spreads motion by one cell, `stride` pixels).
        self_logit: logit of the cell itself; with zero neighbour logits (an untrained
            decoder) 0 makes each step a uniform 3 x 3 mean, a large value the identity.
        stride: input pixels per cell (the guidance is pooled to it).
        logit_scale: factor on the decoder's neighbour logits: under Adam, a larger factor
            moves them that much faster than the rest of the decoder's output.
    """

    OFFSETS = fills.NEIGHBOUR_OFFSETS
    channels = len(OFFSETS)

    def __init__(self, offset, iterations=8, self_logit=0.0, stride=1, logit_scale=1.0,
                 **kwargs):
        super().__init__(**kwargs)
        for field, value, low in (("offset", offset, 0), ("iterations", iterations, 0),
                                  ("stride", stride, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{field} must be an integer >= {low}; got {value!r}.")
        if isinstance(self_logit, bool) or not isinstance(self_logit, (int, float)):
            raise ValueError(f"self_logit must be a number; got {self_logit!r}.")
        if isinstance(logit_scale, bool) or not (isinstance(logit_scale, (int, float))
                                                  and logit_scale > 0):
            raise ValueError(f"logit_scale must be a positive number; got {logit_scale!r}.")
        self.offset, self.iterations, self.stride = offset, iterations, stride
        self.self_logit, self.logit_scale = float(self_logit), float(logit_scale)

    def guidance(self, sparse, nearest=None):
        """(mean guided vector [B, h, w, 2], guided [B, h, w, 1] bool) on the stride's cells.

        With the nearest fill at this stride (fills.DensePrior: a guided cell holds the mean of
        its guides up to stride 2, where no other guide can be nearer its centre) the vectors
        are read from it: no division in the graph, so full-integer exports, which compute the
        fill outside, run too."""
        sparse = tf.cast(sparse, tf.float32)
        mask = sparse[..., 2:3]
        if nearest is not None:
            guided = tf.nn.avg_pool2d(mask, self.stride, self.stride, "VALID") > 0
            return tf.cast(nearest[..., :2], tf.float32), guided
        pooled = tf.nn.avg_pool2d(fills.masked_guidance(sparse), self.stride, self.stride,
                                  "VALID")
        return fills.weighted_mean(pooled[..., :2], pooled[..., 2:]), pooled[..., 2:] > 0

    def affinities(self, out):
        """Softmax weights [B, h, w, 9]: the cell itself, then OFFSETS order."""
        logits = tf.cast(out[..., self.offset:self.offset + self.channels], tf.float32)
        if self.logit_scale != 1.0:
            logits = logits * self.logit_scale
        own = tf.zeros_like(logits[..., :1]) + self.self_logit
        return tf.nn.softmax(tf.concat([own, logits], -1), axis=-1)

    def call(self, inputs):
        # [out, seed, nearest fill, sparse]; files saved before the nearest fill was passed
        # in hold [out, seed, sparse].
        out, seed, *nearest, sparse = inputs
        vectors, guided = self.guidance(sparse, *nearest)
        weights = self.affinities(out)
        flow = tf.where(guided, vectors, tf.cast(seed[..., :2], tf.float32))
        for _ in range(self.iterations):
            step = weights[..., :1] * flow
            for n, neighbour in enumerate(fills.neighbours(flow)):
                step += weights[..., n + 1:n + 2] * neighbour
            flow = tf.where(guided, vectors, step)
        return tf.cast(flow, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (*input_shape[1][:-1], 2)

    def get_config(self):
        return {**super().get_config(), "offset": self.offset, "iterations": self.iterations,
                "self_logit": self.self_logit, "stride": self.stride,
                "logit_scale": self.logit_scale}


@registry.register("head", "affinity")
class Affinity(FillCorrection):
    """The fill-correction head's flow, refined by learned spatial propagation
    (`AffinityPropagation`): 8 more decoder channels weigh each cell's neighbours, and the
    guidance spreads along them for `iterations` steps, put back at the guided cells after
    each, so motion can follow what the image shows and stop at edges.

    Args:
        gain, smooth, pull, relax, sigma, finest_relax, edge_features, nearest_levels,
            nearest_refine: as `fill_correction`, for the seed the propagation starts from.
        iterations: propagation steps at the decoder's stride (each reaches one cell further).
        self_logit: the cell's own weight logit against its neighbours'; an untrained decoder
            (logits near 0) starts as a 3 x 3 mean per step at 0, near the seed at 4 or more.
        logit_scale: factor on the neighbour logits the decoder outputs (> 0): how much
            faster than the rest of its output they learn under Adam.
    """

    name = "affinity"
    MAX_ITERATIONS = 64  # beyond this the unrolled graph grows without reaching much further

    def __init__(self, nbins, fmax, loss, gain=True, smooth="pull_push", pull="tent", relax=4,
                 sigma=0.1, finest_relax=0, edge_features=0, nearest_levels=0,
                 nearest_refine=fills.DensePrior.REFINE, iterations=8, self_logit=0.0,
                 logit_scale=1.0):
        super().__init__(nbins, fmax, loss, gain=gain, smooth=smooth, pull=pull, relax=relax,
                         sigma=sigma, finest_relax=finest_relax, edge_features=edge_features,
                         nearest_levels=nearest_levels, nearest_refine=nearest_refine)
        if (isinstance(iterations, bool) or not isinstance(iterations, int)
                or not 1 <= iterations <= self.MAX_ITERATIONS):
            raise ValueError(f"config.model.options.affinity.iterations must be an integer in "
                             f"[1, {self.MAX_ITERATIONS}]; got {iterations!r}.")
        if isinstance(self_logit, bool) or not isinstance(self_logit, (int, float)):
            raise ValueError("config.model.options.affinity.self_logit must be a number; "
                             f"got {self_logit!r}.")
        if isinstance(logit_scale, bool) or not (isinstance(logit_scale, (int, float))
                                                  and logit_scale > 0):
            raise ValueError("config.model.options.affinity.logit_scale must be a positive "
                             f"number; got {logit_scale!r}.")
        self.iterations, self.self_logit = iterations, float(self_logit)
        self.logit_scale = float(logit_scale)

    @property
    def decoder_channels(self):
        return super().decoder_channels + AffinityPropagation.channels

    def attach(self, sparse, image, feature_stride, out_stride):
        inputs, prior = self._nearest(sparse, feature_stride, out_stride)

        def read_out(out):
            made, blend = self._blend_fills(sparse, image, out, out_stride, feature_stride)
            seed = blend([out, prior, *made])
            flow = AffinityPropagation(super(Affinity, self).decoder_channels, self.iterations,
                                       self.self_logit, out_stride, self.logit_scale,
                                       name="propagate")([out, seed, prior, sparse])
            return flow, flow

        return inputs, read_out
