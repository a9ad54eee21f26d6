r"""Remakes the README's application pictures (`docs/apps/example.jpg`, `animation.gif`) with
a model, by default the shipped one, on a frame of the carphone clip:

  python docs/apps/make_examples.py [--model=PATH ...]

Panels: arrows (yellow) and pins (circles) | CMP's flow | the last animation frame | the mask
from 3 object (green) and 8 background (red) clicks. With --model given several times
(`--model=shipped --model=runs/edges`) each model gets a row of example.jpg, labelled, and the
animation shows them side by side.
"""
import os
import sys

import cv2
import numpy as np
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from cmp_tf import cli  # noqa: E402
from cmp_tf import flow as flow_lib  # noqa: E402
from cmp_tf.apps import animate  # noqa: E402
from cmp_tf.apps import annotate  # noqa: E402
from cmp_tf.apps import inputs  # noqa: E402
from cmp_tf.data import formats  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CLIP = os.path.join(HERE, "..", "..", "cmp_tf", "data", "samples", "carphone.mp4")
# The face turns left; pins hold the head's top, the seat and the shoulders still.
ARROWS = [(75, 52, -10, 4), (88, 12, 0, 0), (45, 45, 0, 0), (135, 45, 0, 0), (40, 110, 0, 0),
          (88, 118, 0, 0), (140, 110, 0, 0)]
POSITIVE = [(88, 35), (80, 55), (95, 70)]
NEGATIVE = [(45, 45), (135, 45), (40, 100), (150, 100), (88, 118), (20, 20), (88, 6),
            (88, 140)]
FRAMES, FPS = 16, 8.0

LABEL_HEIGHT = 16  # px of the strip above a row that names its model
_MODEL = flags.DEFINE_multi_string("model", [inputs.SHIPPED], "Any format Propagator loads, "
                                   "or 'shipped'; repeat to show several models.")
_OUT = flags.DEFINE_string("out", HERE, "Folder for example.jpg and animation.gif.")


def label_strip(text, width):
    """A white strip naming a row's model."""
    strip = np.full((LABEL_HEIGHT, width, 3), 255, np.uint8)
    cv2.putText(strip, text, (2, LABEL_HEIGHT - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                cv2.LINE_AA)
    return strip


def example(propagator, image):
    """(the row of panels, the animation's frames) of one model."""
    flow, frames = animate.animate(propagator, image, np.array(ARROWS, np.float32), FRAMES)
    mask = annotate.annotate(propagator, image, np.array(POSITIVE, np.float32),
                             np.array(NEGATIVE, np.float32))
    guide = image.copy()
    for x, y, u, v in ARROWS:
        if u or v:
            cv2.arrowedLine(guide, (x, y), (x + 2 * u, y + 2 * v), (255, 200, 0), 2,
                            tipLength=0.3)
        else:
            cv2.circle(guide, (x, y), 3, (255, 200, 0), 1)
    clicked = annotate.overlay(image, mask)
    for points, colour in ((POSITIVE, (40, 200, 40)), (NEGATIVE, (220, 20, 20))):
        for x, y in points:
            cv2.circle(clicked, (x, y), 2, colour, -1)
    gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([guide, gap, flow_lib.flow_to_color(flow), gap, frames[-1], gap,
                           clicked], 1), frames


def main(argv):
    del argv
    image = formats.read_video(CLIP)[0][0]
    rows, animations = [], []
    propagators = inputs.load_propagators(_MODEL.value)
    for name, propagator in propagators.items():
        row, frames = example(propagator, image)
        if len(propagators) > 1:
            row = np.concatenate([label_strip(name, row.shape[1]), row], 0)
            frames = [np.concatenate([label_strip(name, f.shape[1]), f], 0) for f in frames]
        rows.append(row)
        animations.append(frames)
    gap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    panel = np.concatenate([part for row in rows for part in (row, gap)][:-1], 0)
    inputs.write_image(os.path.join(_OUT.value, "example.jpg"), panel)
    side = np.full((animations[0][0].shape[0], 4, 3), 255, np.uint8)
    frames = [np.concatenate([part for frame in group for part in (frame, side)][:-1], 1)
              for group in zip(*animations)]
    animate.write_animation(os.path.join(_OUT.value, "animation.gif"), frames, FPS)
    print(f"Wrote {_OUT.value}/example.jpg and animation.gif")


if __name__ == "__main__":
    cli.run(main)
