r"""The shipped propagation recipe (`configs/propagation.py`) whose smooth fill follows image
edges: the `fill_correction` head blends the nearest fill with the edge-aware pull-push fill
(cmp_tf/models/fills.py, `EdgeAwareFill`), whose push and relaxation weigh neighbouring cells
by how close their colours are, so a guide's motion spreads over its region and stops where
the colour changes.

It keeps the dense decoder and the exact one-level nearest fill (`nearest_levels=0`): its
figures in docs/ablation.md were measured so, and two runs with the shipped recipe's
three-level fill failed on the generated scenes (the learned gain switched the fill off over
whole regions).

  python train.py --config=configs/propagation_edges.py
"""
from configs import propagation


def get_config(arg=None):
    c = propagation.get_config(arg)
    propagation.plain_l1_loss(c)
    # the read-out and the decoder its figures were measured with: fills at the decoder's
    # stride 2, a free correction, dense convs
    c.model.options.fill_correction.update(smooth="edge_aware", sigma=0.1, finest_relax=0,
                                           nearest_levels=0, nearest_refine_finest=True,
                                           nearest_resize_finest=False, correction=True,
                                           fill_stride=0, local_affine_residual_finest=False)
    c.model.options.skip_layer.update(separable=False, out_stride=2)
    return c
