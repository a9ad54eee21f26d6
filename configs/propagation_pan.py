r"""The shipped propagation recipe (`configs/propagation.py`) for footage from a moving camera:
half the real training samples have one vector added to all of their flow (up to 6 px per
component, `config.data.flow_translate`), as a camera's pan adds it, so that motion far from
the guides is what the guides say rather than none.

The shipped recipe learns from still-camera clips that a guide's motion fades with distance.
On a real stereo pair with true disparity, where every pixel moves, that costs: with one
guide it is 50-61% (watershed) and 81-94% (uniform) behind the nearest fill, and behind it
at every K. Trained this way, in two seeds: 6-7% and 22-24% behind with one guide, ahead of
every classical fill from 5 to 100 watershed guides. On still-camera footage it costs with
few watershed guides (docs/ablation.md, "A camera that moves: a stereo pair with true
disparity"), so it is not the shipped recipe.

  python train.py --config=configs/propagation_pan.py
"""
from configs import propagation


def get_config(arg=None):
    c = propagation.get_config(arg)
    c.data.update(flow_translate=6.0, flow_translate_chance=0.5)
    return c
