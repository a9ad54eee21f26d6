r"""The propagation model that ships with cmp_tf (`cmp_tf/pretrained/default`), and what
`python train.py` trains with no flags (`configs/default.py`): the paper's CMP scaled to a CPU
(`configs/cpu_bins.py`) with the `fill_correction` head instead of the paper's bins: an
L1-regressed correction to a per-pixel blend of the nearest and a smooth local affine fill of
the guidance (moving least squares on a pyramid of the guides' moments), scaled by a Gaussian
gain of the distance to the guides whose reach is learned per pixel; trained by Adam with 1 to
400 guides per sample and half its samples layered scenes with exact flow. Its decoder's convs
at strides 4 and 2 are depthwise-separable, and its nearest fill at the output's stride runs
on five levels with one refining pass each, the coarsest at the features' stride (the
decoder's input fill, flooded once): the model takes about half the time it took with the
dense decoder and a three-level fill with two passes, for about the same EPE (docs/speed.md,
docs/ablation.md).

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

  python train.py                                      # ~4-8 minutes on 2 cores
  python train.py --config=configs/propagation.py      # the same recipe, by name
"""
from configs import cpu_bins


def get_config(arg=None):
    c = cpu_bins.get_config(arg)
    c.flow.loss = "l1"
    c.model.head = "fill_correction"
    # The nearest fill at the output's stride on 5 levels (fills.DensePrior, coarse_stride
    # 32, the features' stride: its coarsest level is the decoder's input fill) with one
    # refining pass per finer level: less than half the time of the one-level fill; on the
    # same weights within 0.003 in relative EPE of three levels, retrained once within 0.012
    # (docs/ablation.md, "Measured on the shipped weights").
    # The smooth fill: local affine fits (fills.LocalAffineFill), ahead of pull-push from 5
    # guides on (docs/ablation.md, "A local affine smooth fill").
    c.model.options.fill_correction.update(gain=True, smooth="local_affine", nearest_levels=4,
                                           nearest_refine=1)
    # Depthwise-separable convs where the decoder works at strides 4 and 2: a fifth of the
    # network's multiply-adds, the same EPE at K >= 5 (docs/ablation.md).
    c.model.options.skip_layer.separable = True
    c.optim.name, c.schedule.lr = "adam", 1e-3
    c.guidance.num_points = (1, 400)
    c.data.layered.ratio = 0.5
    return c
