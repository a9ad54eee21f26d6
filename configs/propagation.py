r"""The propagation model that ships with cmp_tf (`cmp_tf/pretrained/default`): the CPU default
with direct L1 regression of a correction to the dense prior instead of the paper's bins.

Why (benchmarks/ablation.py, README "Propagation"): at the default's 1000-step CPU budget,
every bin-loss variant trained the read-out away from the nearest fill it starts from and
ended worse than the fill on unseen clips; L1 regression stays at the fill plus what it learns,
which is what makes it at least as good as the nearest fill at every K.

  python train.py --config=configs/propagation.py      # ~8 minutes on 2 cores
"""
from configs import default


def get_config(arg=None):
    c = default.get_config(arg)
    c.flow.loss = "l1"
    return c
