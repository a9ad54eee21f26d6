"""Generated scenes: exact-flow pairs (a teacher-free signal where every flow vector is known),
and a labelled VOC-format segmentation set with videos of the same world (transfer checks).
"""
import json
import os

import cv2
import numpy as np


def _texture(rng, height, width, blur):
    """Smoothed colour noise: enough structure to be tracked, none of it repeating."""
    noise = rng.uniform(0, 255, (height, width, 3)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), blur)
    lo, hi = noise.min(), noise.max()
    return ((noise - lo) / max(hi - lo, 1e-6) * 255).astype(np.uint8)


def moving_square(size=64, square=32, background_motion=(-2, 1), square_motion=(5, -3),
                  blur=1.5, seed=0):
    """A textured square moving over a textured, itself moving, background.

    Motions are whole pixels (u, v), so both frames are exact crops of the textures and the
    flow is exact everywhere; the square occludes the background it covers in either frame.

    Returns:
        (frame1, frame2, flow): uint8 [size, size, 3] twice and float32 [size, size, 2], the
        flow from frame1 to frame2.
    """
    motions = np.array([background_motion, square_motion])
    if not np.array_equal(motions, np.round(motions)):
        raise ValueError(f"motions must be whole pixels; got {background_motion}, {square_motion}.")
    if not 0 < square < size:
        raise ValueError(f"square must be between 0 and size={size}; got {square}.")
    margin = int(np.abs(motions).max())
    if 2 * margin + square > size:
        raise ValueError(f"square {square} moving {margin}px does not fit in {size}px.")
    rng = np.random.default_rng(seed)
    pad = margin
    background = _texture(rng, size + 2 * pad, size + 2 * pad, blur)
    patch = _texture(rng, square, square, blur)
    (bu, bv), (su, sv) = motions.astype(int)
    # Start half a step back from the centre so the square stays in view in both frames.
    y0, x0 = (size - square) // 2 - sv // 2, (size - square) // 2 - su // 2

    def render(t):
        y, x = pad - bv * t, pad - bu * t  # the background moves by (bu, bv) per frame
        frame = background[y:y + size, x:x + size].copy()
        y, x = y0 + sv * t, x0 + su * t
        frame[y:y + square, x:x + square] = patch
        return frame

    flow = np.empty((size, size, 2), np.float32)
    flow[...] = (bu, bv)
    flow[y0:y0 + square, x0:x0 + square] = (su, sv)
    return render(0), render(1), flow


# --- Segmentation scenes: a VOC-format labelled set and unlabelled videos of the same world ----
#
# Objects of a few classes, each class with its own shape and texture family, on textured
# backgrounds. The families overlap on purpose (ellipses and triangles share warm hues, the
# background draws from every hue and sometimes has stripes like rectangles), so neither colour
# nor texture alone gives the class. In the videos every object moves rigidly with its own
# motion against a differently moving background: the signal CMP pretrains on, with no labels.

SYNTHETIC_CLASSES = ("background", "ellipse", "rectangle", "triangle")
SYNTHETIC_MANIFEST = "synthetic.json"
# Written first and removed last: a folder holding it is a set whose writing was cut short.
SYNTHETIC_UNFINISHED = "synthetic.unfinished.json"
# The files a set is made of, by folder: what an unfinished set's rewrite removes first.
_SET_FILES = (("JPEGImages", "*_[0-9][0-9][0-9][0-9][0-9].jpg"),
              ("SegmentationClass", "*_[0-9][0-9][0-9][0-9][0-9].png"),
              ("ImageSets/Segmentation", "*.txt"), ("videos", "scene_[0-9][0-9][0-9][0-9].avi"))
# Texture family per class: hue range (degrees), saturation range, noise blur sigma (px,
# relative to a 160 px image), probability of stripes and their period (px).
_FAMILIES = {
    "background": dict(hue=(0, 360), saturation=(0.2, 0.8), blur=(2.0, 4.0), stripes=0.3,
                       period=(6, 14)),
    "ellipse": dict(hue=(0, 60), saturation=(0.5, 1.0), blur=(0.8, 1.6), stripes=0.0,
                    period=(6, 14)),
    "rectangle": dict(hue=(170, 260), saturation=(0.4, 0.9), blur=(0.8, 1.6), stripes=0.7,
                      period=(5, 10)),
    "triangle": dict(hue=(0, 60), saturation=(0.4, 0.9), blur=(3.0, 5.0), stripes=0.2,
                     period=(8, 16)),
}
_GRAIN = 12.0  # +- grey levels of per-pixel noise: texture the flow teacher can track
_REFERENCE_SIDE = 160  # sizes in _FAMILIES and below are for this image side; others scale
_OBJECT_RADIUS = (0.12, 0.28)  # fraction of the image side
_MOTION = dict(background=3.0, objects=6.0, spin_degrees=2.0)  # max per frame, px and degrees
_IGNORE_BAND = 3  # px: a VOC-like "void" band (label 255) on every object boundary
_JPEG_QUALITY = 95
_SUBPIXEL_BITS = 4  # cv2.fillPoly fixed-point vertices: 1/16 px
_SUBPIXEL = 2**_SUBPIXEL_BITS
_VIDEO_FPS = 10


def _family_texture(rng, height, width, family, scale):
    """A texture of one class's family: two colours of its hue range mixed by smooth noise,
    optionally stripes, plus fine grain."""
    f = _FAMILIES[family]
    noise = rng.uniform(0, 1, (height, width)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), rng.uniform(*f["blur"]) * scale)
    noise = (noise - noise.min()) / max(float(noise.max() - noise.min()), 1e-6)
    if rng.uniform() < f["stripes"]:
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(*f["period"]) * scale
        ys, xs = np.mgrid[:height, :width].astype(np.float32)
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (xs * np.cos(angle) + ys * np.sin(angle))
                                     / period)
        noise = 0.4 * noise + 0.6 * stripes
    hsv = np.zeros((2, 1, 3), np.float32)
    hsv[:, 0, 0] = rng.uniform(*f["hue"], 2) % 360  # OpenCV float HSV: hue in degrees
    hsv[:, 0, 1] = rng.uniform(*f["saturation"], 2)
    hsv[:, 0, 2] = rng.uniform(0.35, 1.0, 2)
    colours = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[:, 0] * 255  # [2, 3]
    image = colours[0] * (1 - noise[..., None]) + colours[1] * noise[..., None]
    image += rng.uniform(-_GRAIN, _GRAIN, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _outline(rng, cls, radius):
    """Vertices of an object's shape in its own frame (centred on 0), float32 [N, 2] (x, y)."""
    if cls == "ellipse":
        axes = radius * rng.uniform(0.55, 1.0, 2)
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([axes[0] * np.cos(t), axes[1] * np.sin(t)], -1).astype(np.float32)
    if cls == "rectangle":
        half = radius * rng.uniform(0.5, 0.9, 2)
        return np.array([[-half[0], -half[1]], [half[0], -half[1]], [half[0], half[1]],
                         [-half[0], half[1]]], np.float32)
    if cls == "triangle":
        angles = np.sort(rng.uniform(0, 2 * np.pi, 3))
        angles = angles[0] + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.4, 0.4, 3)
        return (radius * np.stack([np.cos(angles), np.sin(angles)], -1)).astype(np.float32)
    raise ValueError(f"unknown synthetic class {cls!r}; known: {SYNTHETIC_CLASSES[1:]}.")


class _Scene:
    """One scene: a background and objects, each with its own rigid motion per frame.

    Objects are placed where they are at the middle frame, so they stay mostly in view.
    """

    def __init__(self, rng, height, width, num_objects, frames=1):
        scale = min(height, width) / _REFERENCE_SIDE
        self.height, self.width = height, width
        self.margin = int(np.ceil(_MOTION["background"] * scale * frames)) + 1
        self.background = _family_texture(rng, height + 2 * self.margin,
                                          width + 2 * self.margin, "background", scale)
        self.background_motion = rng.uniform(-1, 1, 2) * _MOTION["background"] * scale
        side = min(height, width)
        self.objects = []
        for _ in range(num_objects):
            cls = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
            radius = rng.uniform(*_OBJECT_RADIUS) * side
            size = int(np.ceil(2 * radius)) + 2
            middle = rng.uniform([radius, radius], [width - radius, height - radius])
            velocity = rng.uniform(-1, 1, 2) * _MOTION["objects"] * scale
            self.objects.append(dict(
                cls=cls, outline=_outline(rng, SYNTHETIC_CLASSES[cls], radius),
                texture=_family_texture(rng, size, size, SYNTHETIC_CLASSES[cls], scale),
                centre=middle - velocity * (frames - 1) / 2, angle=rng.uniform(0, 360),
                velocity=velocity, spin=rng.uniform(-1, 1) * _MOTION["spin_degrees"]))

    def render(self, t=0):
        """(frame [H, W, 3] uint8, labels [H, W] uint8 class indices) at frame t."""
        shift = np.array([[1, 0, -self.margin + self.background_motion[0] * t],
                          [0, 1, -self.margin + self.background_motion[1] * t]], np.float32)
        frame = cv2.warpAffine(self.background, shift, (self.width, self.height),
                               flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        labels = np.zeros((self.height, self.width), np.uint8)
        for obj in self.objects:
            centre = obj["centre"] + obj["velocity"] * t
            theta = np.deg2rad(obj["angle"] + obj["spin"] * t)
            rotation = np.array([[np.cos(theta), -np.sin(theta)],
                                 [np.sin(theta), np.cos(theta)]], np.float32)
            polygon = obj["outline"] @ rotation.T + centre
            mask = np.zeros_like(labels)
            cv2.fillPoly(mask, [np.round(polygon * _SUBPIXEL).astype(np.int32)], 1,
                         shift=_SUBPIXEL_BITS)  # sub-pixel vertices: no jitter between frames
            # The texture moves with the object: texture centre -> object centre, rotated.
            half = (obj["texture"].shape[0] - 1) / 2
            matrix = np.concatenate([rotation, (centre - rotation @ [half, half])[:, None]], 1)
            texture = cv2.warpAffine(obj["texture"], matrix.astype(np.float32),
                                     (self.width, self.height), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REFLECT)
            inside = mask > 0
            frame[inside] = texture[inside]
            labels[inside] = obj["cls"]
        return frame, labels


def _ignore_boundaries(labels, width):
    """Marks a `width` px band on every class boundary as ignore (255), as VOC's void."""
    kernel = np.ones((width, width), np.uint8)
    band = cv2.dilate(labels, kernel) != cv2.erode(labels, kernel)
    out = labels.copy()
    out[band] = 255
    return out


def write_video(path, frames, fps=_VIDEO_FPS):
    """Writes RGB frames as an MJPG .avi that OpenCV reads back; returns its path as text."""
    path = str(path)
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise ValueError(f"OpenCV cannot write the video {path}.")
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def write_synthetic_voc(folder, num_train=160, num_val=64, num_videos=24, frames=10,
                        size=(160, 160), objects=(1, 3), seed=0, progress=False):
    """Writes a small VOC-format segmentation set and videos of the same kind of scenes.

    Layout: `JPEGImages/`, `SegmentationClass/` (palette PNGs, 255 on a thin band along every
    object boundary), `ImageSets/Segmentation/{train,val}.txt`, `videos/*.avi` (MJPG; for CMP
    pretraining, e.g. `--config.data.train="('<folder>/videos',)"`) and `synthetic.json` (the
    classes and these arguments). Labelled images are 85-100% of `size` per side (sizes vary,
    as in VOC); video frames are exactly `size`. Images, labels and videos are separate scenes.
    Deterministic for a seed; a few seconds for the defaults (`progress`: a bar over the
    images and videos). Until it ends the folder holds `synthetic.unfinished.json`: a set cut
    short is written again by `ensure_synthetic_voc`.

    Returns:
        The manifest dict written to synthetic.json.
    """
    for name, value in dict(num_train=num_train, num_val=num_val, num_videos=num_videos).items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0; got {value}.")
    if frames < 2:
        raise ValueError(f"frames must be at least 2 (a video needs a pair); got {frames}.")
    if len(size) != 2 or min(size) < 32:
        raise ValueError(f"size must be (height, width), each at least 32; got {size}.")
    if len(objects) != 2 or not 1 <= objects[0] <= objects[1]:
        raise ValueError(f"objects must be (min, max) with 1 <= min <= max; got {objects}.")
    from cmp_tf import progress as progress_lib

    from cmp_tf.data import shards  # the atomic JSON writer
    from cmp_tf.data import voc  # Pillow and TF only when writing sets

    folder = os.fspath(folder)
    for sub, _ in _SET_FILES:
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    manifest = dict(classes=list(SYNTHETIC_CLASSES), num_train=num_train, num_val=num_val,
                    num_videos=num_videos, frames=frames, size=list(size),
                    objects=list(objects), seed=seed)
    shards.write_json(os.path.join(folder, SYNTHETIC_UNFINISHED), manifest)

    rng = np.random.default_rng(seed)
    height, width = size
    splits = dict(train=num_train, val=num_val)
    bar = progress_lib.bar(total=num_train + num_val + num_videos, desc="synthetic set",
                           unit="scene", disable=not progress)
    for split, count in splits.items():
        ids = []
        for index in range(count):
            h = int(rng.integers(int(0.85 * height), height + 1))
            w = int(rng.integers(int(0.85 * width), width + 1))
            count = int(rng.integers(objects[0], objects[1] + 1))
            frame, labels = _Scene(rng, h, w, count).render()
            name = f"{split}_{index:05d}"
            cv2.imwrite(os.path.join(folder, "JPEGImages", f"{name}.jpg"),
                        cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
            voc.write_label(os.path.join(folder, "SegmentationClass", f"{name}.png"),
                            _ignore_boundaries(labels, _IGNORE_BAND))
            ids.append(name)
            bar.update()
        with open(os.path.join(folder, "ImageSets", "Segmentation", f"{split}.txt"), "w") as f:
            f.write("".join(f"{i}\n" for i in ids))
    for index in range(num_videos):
        scene = _Scene(rng, height, width, int(rng.integers(objects[0], objects[1] + 1)), frames)
        write_video(os.path.join(folder, "videos", f"scene_{index:04d}.avi"),
                     [scene.render(t)[0] for t in range(frames)])
        bar.update()
    bar.close()
    shards.write_json(os.path.join(folder, SYNTHETIC_MANIFEST), manifest)
    os.remove(os.path.join(folder, SYNTHETIC_UNFINISHED))
    return manifest


def _remove_unfinished(folder):
    """Removes the files of a set whose writing was cut short (and its marker), so that a
    rewrite with other arguments leaves none of them behind."""
    import glob

    for sub, pattern in _SET_FILES:
        for path in glob.glob(os.path.join(folder, sub, pattern)):
            os.remove(path)
    os.remove(os.path.join(folder, SYNTHETIC_UNFINISHED))


def ensure_synthetic_voc(folder, progress=False, **kwargs):
    """The synthetic set in `folder`, written on first use (or again, if its writing was cut
    short); reused if written with the same arguments. Refuses a folder that holds something
    else or a set made with other arguments.

    Returns:
        The manifest (see write_synthetic_voc).
    """
    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"{folder} is a file, not a folder for the synthetic set.")
    path = os.path.join(folder, SYNTHETIC_MANIFEST)
    unfinished = os.path.isfile(os.path.join(folder, SYNTHETIC_UNFINISHED))
    if os.path.isfile(path) and unfinished:  # cut short after the manifest: the set is whole
        os.remove(os.path.join(folder, SYNTHETIC_UNFINISHED))
    elif unfinished:
        _remove_unfinished(folder)
        return write_synthetic_voc(folder, progress=progress, **kwargs)
    if os.path.isfile(path):
        with open(path) as f:
            manifest = json.load(f)
        wanted = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
        changed = {k: (manifest.get(k), v) for k, v in wanted.items() if manifest.get(k) != v}
        if changed:
            raise ValueError(f"{folder} holds a synthetic set made with other arguments "
                             f"(found, wanted: {changed}); delete it or choose another folder.")
        return manifest
    if os.path.isdir(folder) and os.listdir(folder):
        raise ValueError(f"{folder} exists but holds no {SYNTHETIC_MANIFEST}: it is not a "
                         "generated synthetic set; refusing to write into it.")
    return write_synthetic_voc(folder, progress=progress, **kwargs)


def main(argv):
    """`python -m cmp_tf.data.synthetic --out=data/cache/synthetic_voc`: writes the set."""
    from absl import app
    from absl import flags

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
    flag = flags.FLAGS
    from cmp_tf import rundir

    rundir.check_folder_path(flag.out, "--out")
    manifest = ensure_synthetic_voc(
        flag.out, num_train=flag.num_train, num_val=flag.num_val, num_videos=flag.num_videos,
        frames=flag.frames, size=(flag.size, flag.size), seed=flag.seed, progress=True)
    print(f"{manifest['num_train']} train and {manifest['num_val']} val labelled images "
          f"(classes {', '.join(manifest['classes'])}) and {manifest['num_videos']} videos in "
          f"{flag.out}. Pretrain CMP on the videos with\n  python train.py "
          f"--config.data.train=\"('{os.path.join(flag.out, 'videos')}',)\" "
          "--workdir=runs/cmp_synthetic")


def _define_flags():
    import inspect

    from absl import flags

    default = {k: p.default for k, p in inspect.signature(write_synthetic_voc).parameters.items()}
    flags.DEFINE_string("out", None, "Folder to write the set into.", required=True)
    flags.DEFINE_integer("num_train", default["num_train"], "Labelled training images.")
    flags.DEFINE_integer("num_val", default["num_val"], "Labelled validation images.")
    flags.DEFINE_integer("num_videos", default["num_videos"], "Videos for CMP pretraining.")
    flags.DEFINE_integer("frames", default["frames"], "Frames per video.")
    flags.DEFINE_integer("size", default["size"][0], "Image side in pixels.")
    flags.DEFINE_integer("seed", default["seed"], "Random seed.")


if __name__ == "__main__":
    from cmp_tf import cli

    _define_flags()
    cli.run(main)
