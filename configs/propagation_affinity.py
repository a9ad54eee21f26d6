r"""The shipped propagation recipe (`configs/propagation.py`) with the `affinity` head: its
fill-correction flow refined by learned spatial propagation at the decoder's stride, 8
neighbour weights per cell predicted from the image, the guidance put back at the guided
cells after every step (cmp_tf/models/heads.py, `AffinityPropagation`).

Why: both fills spread a guide's motion by distance alone, across object edges; the
propagation lets the network stop it where it sees an edge. Figures against the shipped
recipe at the same budget: docs/ablation.md, "Learned spatial propagation".

  python train.py --config=configs/propagation_affinity.py
"""
from configs import propagation


def get_config(arg=None):
    c = propagation.get_config(arg)
    c.model.head = "affinity"
    propagation.plain_l1_loss(c)
    # The pull-push smooth fill its figures were measured with (the shipped recipe's since is
    # the local affine fill).
    c.model.options.affinity.update(gain=True, smooth="pull_push", pull="tent", relax=4,
                                    iterations=8, self_logit=0.0)
    # the decoder its figures were measured with: dense convs, its stride-2 stage
    c.model.options.skip_layer.update(separable=False, out_stride=2)
    return c
