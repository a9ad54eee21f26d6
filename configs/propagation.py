r"""The propagation model that ships with cmp_tf (`cmp_tf/pretrained/default`), and what
`python train.py` trains with no flags (`configs/default.py`): the paper's CMP scaled to a CPU
(`configs/cpu_bins.py`) with the `fill_correction` head instead of the paper's bins: a per-pixel
blend of the nearest and a smooth local affine fill of the guidance (moving least squares on a
pyramid of the guides' moments), scaled by a Gaussian gain of the distance to the guides whose
reach is learned per pixel, L1-regressed relative to each sample's motion; trained by Adam
with 1 to 400 guides per sample and half its samples layered scenes with exact flow. Its
decoder ends after its stride-4 fusion, its convs at stride 4 depthwise-separable, and the
blend's weight and the gain's reach it predicts there are resized to the fills' 2 px cells;
the nearest fill on those cells runs on five levels with one refining pass at each but the
finest, the coarsest at the features' stride (the decoder's input fill, flooded once). That
is less than half the time of the dense decoder at stride 2 with a three-level fill and two
passes, for about the same EPE (docs/speed.md, docs/ablation.md).

Why (benchmarks/ablation.py, docs/ablation.md): at the default's 1000-step CPU budget, every
bin-loss variant trained the read-out away from the fill it starts from and ended worse than
the fill on unseen clips; L1 regression stays at its base fill plus what it learns. The blend's
base, the mean of the two fills, is closer to the reference flow of unseen real frames than
either fill. The gain learns how far a guide's motion carries in real video (both fills copy
it to the image border); Gaussian, it is flat at the guides, so dense guidance keeps its
vectors. The varied guide counts, the layered scenes and the smoother fill keep it at least as
good as the nearest fill on sharp motion boundaries too (held-out generated scenes). The local
affine fill, which extrapolates the local slope of the motion where pull-push holds its mean,
made the model better from 5 guides on in two seeds on both the unseen clip and the generated
scenes (docs/ablation.md, "A local affine smooth fill").

  python train.py                                      # ~3-4 minutes on 2 cores
  python train.py --config=configs/propagation.py      # the same recipe, by name
"""
from configs import common
from configs import cpu_bins


def get_config(arg=None):
    c = cpu_bins.get_config(arg)
    c.flow.loss = "l1"
    # Each sample's L1 loss divided by its zero-flow loss, at least 2 px
    # (losses.relative_to_zero_flow): samples weigh as in evaluation's relative EPE, not by
    # how fast they move; those under 2 px weigh as one of 2 px. Mean of three
    # seeds: one watershed guide 9% and 5% better on bikes and the generated scenes, within
    # a seed's spread from 5 guides on (docs/ablation.md, "Three seeds each").
    c.flow.relative, c.flow.relative_floor = True, 2.0
    c.model.head = "fill_correction"
    # The decoder ends after its stride-4 fusion, its convs there depthwise-separable (a fifth
    # of the multiply-adds of dense ones, the same EPE at K >= 5). The fills and the blend run
    # on 2 px cells, the decoder's weight and reach resized to them; no free correction (it
    # was idle): the same EPE within 0.01 at every K, training 30% faster (docs/ablation.md,
    # "The decoder at stride 4, and without the free correction").
    # The nearest fill on those cells on 5 levels (fills.DensePrior, coarse_stride 32, the
    # features' stride: its coarsest level is the decoder's input fill) with one refining
    # pass per finer level but the finest: less than half the time of the one-level fill; on
    # the same weights within 0.003 in relative EPE of three levels, retrained once within
    # 0.012; the finest level's pass, the costliest, within 0.001 (docs/ablation.md,
    # "Measured on the shipped weights"). Its finest level is the next level's fill resized:
    # within 0.0002 on the same weights, the fill alone half the time in LiteRT.
    # The smooth fill: local affine fits (fills.LocalAffineFill), ahead of pull-push from 5
    # guides on (docs/ablation.md, "A local affine smooth fill"). Its fits stop at 4 px; the
    # 2 px cells add a Gaussian mean of their guides' residuals: on the same weights better
    # with dense guides (carphone u400 0.057 against 0.064), within 0.003 elsewhere, the fill
    # a fifth faster in LiteRT (docs/ablation.md, "The local affine fill's finest cells as
    # residuals").
    c.model.options.skip_layer.update(separable=True, out_stride=4)
    c.model.options.fill_correction.update(gain=True, smooth="local_affine", nearest_levels=4,
                                           nearest_refine=1, nearest_refine_finest=False,
                                           nearest_resize_finest=True, correction=False,
                                           fill_stride=2, local_affine_residual_finest=True)
    c.optim.name, c.schedule.lr = "adam", 1e-3
    c.guidance.num_points = (1, 400)
    c.data.layered.ratio = 0.5
    return c


def plain_l1_loss(c):
    """`c` with the loss in pixels, not relative to each sample's motion: what the recipes built
    on this one (edges, geodesic, affinity) were measured with."""
    defaults = common.flow()
    c.flow.update(relative=defaults["relative"], relative_floor=defaults["relative_floor"])
    return c
