r"""Guided animation: drawn arrows on a still image -> CMP's dense flow -> frames along it.

  python -m cmp_tf.apps.animate --image=photo.jpg --arrows="120,80,15,0;40,200,0,0" \
      --frames=16 --out=out.gif [--model=exported/model.tflite]

An arrow "x,y,u,v" says the pixel (x, y) moves by (u, v) pixels over the animation; "x,y,0,0"
pins a point. The paper's video generation was never released; its author suggested CMP's flow
plus a warp (docs/reference.md §6): that is what this does, on the CPU, with NumPy. Writes the
animation (.gif or .mp4) and `<out stem>_flow.png`, the flow's colour coding.

The frames are rendered at the image's own size, so the size is bounded: an image over
--max_pixels (read from its header, before it is decoded) is refused, and so is an animation of
more than MAX_RENDER_PIXELS frame pixels in all (--frames x width x height). Each frame is
warped on its own, so the work in flight is one frame's (its splat about 120 bytes a pixel at
its peak, 250 MB at 2 Mpx), and the frames kept are uint8.
"""
import os

import numpy as np
from absl import app
from absl import flags

from cmp_tf import cli
from cmp_tf import flow as flow_lib
from cmp_tf import rundir
from cmp_tf.apps import inputs

FORMATS = (".gif", ".mp4")
MAX_PIXELS = 2**21  # largest image the command animates (--max_pixels), width x height:
#   1448x1448, or 1920x1080 (2 Mpx)
MAX_RENDER_PIXELS = 2**25  # frames x width x height of one animation: 96 MiB of uint8 frames
#   (16 frames of 2 Mpx, 8 of 2048x2048, 128 of 512x512)
WARP_STRIP_PIXELS = 2**16  # frame pixels warped per call: the bilinear sampling holds ~100 B
#   per pixel while it works (400 MB for a whole 2048x2048 frame), so a frame goes strip by strip


def check_render(width, height, frames, max_render_pixels=MAX_RENDER_PIXELS, name="frames"):
    """Refuses an animation of more than `max_render_pixels` frame pixels in all, naming the
    request and the limit: memory grows with frames x width x height."""
    total = int(frames) * int(width) * int(height)
    if total > max_render_pixels:
        raise ValueError(f"{name}={frames} frames of {width}x{height} px are {total} pixels to "
                         f"render; at most MAX_RENDER_PIXELS={max_render_pixels} are: ask for "
                         "fewer frames or a smaller image.")


def guidance_from_arrows(arrows):
    """[K, 4] (x, y, u, v) -> (points [K, 2], vectors [K, 2]): the Propagator's guidance."""
    arrows = np.asarray(arrows)
    if arrows.ndim != 2 or arrows.shape[1] != 4 or not len(arrows) or arrows.dtype == bool \
            or not np.issubdtype(arrows.dtype, np.number):
        raise ValueError(f"arrows must be [K, 4] numbers (x, y, u, v), K >= 1; got "
                         f"{arrows.dtype} {arrows.shape}.")
    arrows = arrows.astype(np.float32)
    finite = np.isfinite(arrows).all(1)
    if not finite.all():
        index = int(np.argmin(finite))
        raise ValueError(f"arrows item {index + 1} holds values that are not finite numbers: "
                         f"{arrows[index].tolist()}.")
    return arrows[:, :2], arrows[:, 2:]


def predict_flow(propagator, image, arrows):
    """The dense flow (H x W x 2, px) that CMP propagates from the arrows over `image`."""
    points, vectors = guidance_from_arrows(arrows)
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be an [H, W, 3] RGB array; got shape {image.shape}.")
    inputs.check_inside(points, *image.shape[:2], name="arrows")
    return propagator.propagate(image, points, vectors)


def inverse_flow(flow, t):
    """Where each pixel of frame t comes from in the image: the backward flow B with
    frame_t(y) = image(y + B(y)), for the forward motion t * flow.

    Forward splatting: every pixel x lands at x + t * flow(x) and carries -t * flow(x) to each
    of the one to four pixels that point touches (the sub-pixel part kept, so a translation
    moves smoothly and its edges are sampled between object and background). One pixel each,
    by rounding, left cracks where neighbours landed two apart, a comb through an object moving
    by half pixels. Where several land on one pixel the largest motion wins: the moving
    foreground occludes what it covers, as the reference's forward warper orders pixels by
    |flow|. Holes, pixels nothing lands on, are disocclusions behind a moving object or where
    neighbours land more than two pixels apart; they take their own -t * flow(y). Behind an
    object moving by d, y - t*d lies behind the object's trailing edge, so the revealed strip
    is filled with the background next to it, not a second copy of the object (a nearest-valid
    or inpainted flow fills half the strip with zero motion, which samples the object again).
    Sources are clamped to the frame (the border repeats rather than turning black).
    """
    height, width = flow.shape[:2]
    motion = (t * flow).reshape(-1, 2).astype(np.float32)
    land_x = np.tile(np.arange(width, dtype=np.float32), height) + motion[:, 0]
    land_y = np.repeat(np.arange(height, dtype=np.float32), width) + motion[:, 1]
    left, top = np.floor(land_x), np.floor(land_y)
    index = np.int32 if height * width < 2**31 else np.int64  # a third of the memory
    sources, targets = [], []
    for step_x, step_y in ((0, 0), (1, 0), (0, 1), (1, 1)):  # the point's pixel, then those
        # right of and below it where it lies between two (a whole landing point touches one)
        target_x, target_y = left + step_x, top + step_y
        lands = ((target_x >= 0) & (target_x < width) & (target_y >= 0) & (target_y < height))
        if step_x:
            lands &= land_x > left
        if step_y:
            lands &= land_y > top
        lands = np.flatnonzero(lands).astype(index)
        sources.append(lands)
        targets.append(target_y[lands].astype(index) * width + target_x[lands].astype(index))
    del land_x, land_y, left, top
    source, target = np.concatenate(sources), np.concatenate(targets)
    del sources, targets
    # By target, then the largest motion first: each target's first entry is its winner.
    speed = np.hypot(motion[:, 0], motion[:, 1])
    order = np.lexsort((-speed[source], target))
    target, source = target[order], source[order]
    del order
    first = np.flatnonzero(np.diff(target, prepend=-1))  # none when nothing lands in frame
    backward = -motion  # holes: their own backward motion
    backward[target[first]] = -motion[source[first]]
    backward = backward.reshape(height, width, 2)
    xs, ys = np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)[:, None]
    backward[..., 0] = np.clip(xs + backward[..., 0], 0, width - 1) - xs
    backward[..., 1] = np.clip(ys + backward[..., 1], 0, height - 1) - ys
    return backward


def animate_frames(image, flow, frames=16, max_render_pixels=MAX_RENDER_PIXELS, progress=False):
    """Frames of `image` moved along `flow` scaled from 0 (the image) to 1 (the full motion);
    with `progress`, a bar over the frames (2 Mpx frames take seconds each on a CPU).

    Args:
        image: uint8 H x W x 3 RGB.
        flow: float32 H x W x 2 (u, v) px.
        frames: how many, at least 2.
        max_render_pixels: bound on frames x H x W (`check_render`).
    Returns:
        A list of `frames` uint8 H x W x 3 frames, each the image warped backward (bilinear,
        NumPy) by `inverse_flow`, one frame at a time.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 H x W x 3 RGB; got {image.dtype} {image.shape}.")
    flow = flow_lib.check_flow(flow)
    if flow.shape != image.shape[:2] + (2,):
        raise ValueError(f"flow must be {image.shape[:2] + (2,)} for that image; got "
                         f"{flow.shape}.")
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 2:
        raise ValueError(f"frames must be an integer >= 2; got {frames!r}.")
    check_render(image.shape[1], image.shape[0], frames, max_render_pixels)
    from cmp_tf import progress as progress_lib

    source = image.astype(np.float32)
    steps = progress_lib.bar(np.linspace(0.0, 1.0, frames), desc="frames", unit="frame",
                             disable=not progress)
    return [warp_frame(source, inverse_flow(flow, t)) for t in steps]


def warp_frame(image, backward):
    """`image` (H x W x C float32) sampled at y + backward(y): flow.warp_backward's bilinear
    sampling (each of the four neighbours outside the frame counts as 0), done
    WARP_STRIP_PIXELS at a time -> uint8 H x W x C."""
    height, width, channels = image.shape
    rows = max(1, WARP_STRIP_PIXELS // width)
    frame = np.empty((height, width, channels), np.uint8)
    xs = np.arange(width, dtype=np.float32)
    for top in range(0, height, rows):
        strip = backward[top:top + rows]  # [R, W, 2]
        ys = np.arange(top, top + len(strip), dtype=np.float32)[:, None]
        src_y, src_x = ys + strip[..., 1], xs + strip[..., 0]
        y0, x0 = np.floor(src_y), np.floor(src_x)
        fy, fx = (src_y - y0)[..., None], (src_x - x0)[..., None]
        y0, x0 = y0.astype(np.int64), x0.astype(np.int64)
        warped = np.zeros(strip.shape[:2] + (channels,), np.float32)
        for dy, wy in ((0, 1 - fy), (1, fy)):
            for dx, wx in ((0, 1 - fx), (1, fx)):
                y, x = y0 + dy, x0 + dx
                inside = ((y >= 0) & (y < height) & (x >= 0) & (x < width))[..., None]
                values = image[np.clip(y, 0, height - 1), np.clip(x, 0, width - 1)]
                warped += np.where(inside, values, 0.0) * (wy * wx)
        frame[top:top + len(strip)] = np.clip(np.rint(warped), 0, 255).astype(np.uint8)
    return frame


# Frames per second an animation may have: a GIF holds each frame's delay in hundredths of a
# second in 16 bits (at most 655 s, fps >= 0.0016), and browsers show a delay of 0 or 1 as 10
# hundredths, so a GIF plays at most 50 frames a second; an MP4 takes up to 100.
FPS_RANGE = (0.01, 100.0)
GIF_MAX_FPS = 50.0


def check_fps(fps, name="fps", suffix=None):
    """A frame rate within FPS_RANGE, and at most GIF_MAX_FPS for a '.gif' `suffix`, else a
    ValueError naming `name`."""
    inputs.positive(fps, name)
    low, high = FPS_RANGE
    if not low <= fps <= high:
        raise ValueError(f"{name} must lie in [{low:g}, {high:g}] frames per second; got {fps!r}.")
    if suffix == ".gif" and fps > GIF_MAX_FPS:
        raise ValueError(f"{name}={fps:g}: a GIF plays at most {GIF_MAX_FPS:g} frames per second "
                         "(its delays are whole hundredths of a second, and browsers show one "
                         "hundredth as ten); write an .mp4 for more.")
    return float(fps)


def gif_delays(count, fps):
    """Each of `count` frames' delay in ms, whole hundredths of a second as a GIF holds them,
    alternating so the animation lasts count / fps: one delay of 1000 / fps truncated made 8
    fps play at 8.33, and 15 at 16.7."""
    ends = np.floor(np.arange(1, count + 1) * 100.0 / fps + 0.5)  # hundredths
    return (np.diff(ends, prepend=0.0) * 10).astype(int).tolist()


def check_frames(frames):
    """An animation's frames as a list of uint8 [H, W, 3] RGB arrays of one size; ValueError
    naming the first that is not (the writers' own errors name none, and an MP4 writer drops a
    frame of another size with a warning)."""
    frames = [np.asarray(frame) for frame in frames]
    if not frames:
        raise ValueError("frames is empty: an animation needs at least one frame.")
    for index, frame in enumerate(frames):
        size = f" of the first one's shape {frames[0].shape}" if index else ""
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3 or \
                min(frame.shape[:2]) < 1 or frame.shape != frames[0].shape:
            raise ValueError(f"frames item {index + 1} must be a uint8 [H, W, 3] RGB "
                             f"image{size}; got {frame.dtype} {frame.shape}.")
    return frames


def encode_gif(frames, fps):
    """Frames -> the bytes of a looping GIF (imageio, Pillow's writer)."""
    import imageio.v3 as iio

    check_fps(fps, suffix=".gif")
    frames = check_frames(frames)

    return iio.imwrite("<bytes>", list(frames), extension=".gif", is_batch=True,
                       duration=gif_delays(len(frames), fps), loop=0)  # a list: not copied


def check_out(path):
    """The animation's format from its file name ('.gif' or '.mp4'); ValueError otherwise."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FORMATS:
        raise ValueError(f"--out={path} must end in one of {', '.join(FORMATS)}.")
    return suffix


def write_animation(path, frames, fps):
    """Writes frames as a looping GIF (imageio) or an MP4 (OpenCV's mp4v: no ffmpeg needed),
    through a temporary file beside `path`: a file already there is replaced only by a whole
    animation."""
    suffix = check_out(path)
    check_fps(fps, "--fps", suffix)
    frames = check_frames(frames)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with rundir.whole_file(path) as partial:
        if suffix == ".gif":
            with open(partial, "wb") as f:
                f.write(encode_gif(frames, fps))
        else:
            _write_mp4(partial, frames, fps, path)
    return path


def _write_mp4(path, frames, fps, named):
    import cv2

    height, width = frames[0].shape[:2]
    # MPEG-4 codes whole 2 x 2 chroma blocks: an odd side would be cut by a pixel, so the
    # last row or column is repeated instead.
    even = (-height % 2, -width % 2)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), float(fps),
                             (width + even[1], height + even[0]))
    if not writer.isOpened():
        raise ValueError(f"--out={named}: OpenCV cannot write MP4 (mp4v) here.")
    for frame in frames:
        frame = np.pad(frame, ((0, even[0]), (0, even[1]), (0, 0)), mode="edge")
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def flow_path(out):
    """`<out stem>_flow.png` beside the animation."""
    return os.path.splitext(out)[0] + "_flow.png"


def animate(propagator, image, arrows, frames=16, progress=False):
    """(flow, frames): CMP's flow from the arrows and the animation along it."""
    image = np.asarray(image)
    flow = predict_flow(propagator, image, arrows)
    return flow, animate_frames(image, flow, frames, progress=progress)


# --- command line (flags are defined only when run as a program: the page imports this) -----

FRAMES, FPS, MAX_SIDE = 16, 8.0, 512  # the command's defaults; the page uses them too


def define_flags():
    flags.DEFINE_string("model", None, "A run directory, .keras, .tflite, .onnx or SavedModel "
                        "folder; default the model that ships with cmp_tf.")
    flags.DEFINE_string("image", None, "The still image (PNG, JPEG, ...).")
    flags.DEFINE_string("arrows", None, "'x,y,u,v;...': pixel (x, y) moves by (u, v) px over "
                        "the animation; 'x,y,0,0' pins a point.")
    flags.DEFINE_integer("frames", FRAMES, "Frames, the first the image itself, the last the "
                         "full motion.")
    flags.DEFINE_float("fps", FPS, f"Frames per second of the animation: {FPS_RANGE[0]:g} to "
                       f"{FPS_RANGE[1]:g}, at most {GIF_MAX_FPS:g} for a GIF.")
    flags.DEFINE_string("out", "animation.gif", "The animation, .gif or .mp4; the flow colour "
                        "image goes beside it as <stem>_flow.png.")
    flags.DEFINE_integer("max_side", MAX_SIDE, "The network sees the image shrunk to this longer "
                         "side at most (the flow is scaled back); -1: full size.")
    flags.DEFINE_bool("fade", True, "The model's learned fade of a guide's motion with distance "
                      "(a still camera); --nofade moves the whole picture as the arrows say, "
                      "as a camera's pan would (a Keras model, or a file exported --nofade).")
    flags.DEFINE_integer("max_pixels", MAX_PIXELS, "Largest image animated, width x height: the "
                         "frames are rendered at the image's size, so a larger one is refused "
                         "(its size is read from the file's header, before decoding).")


def run(model, image, arrows, frames=FRAMES, fps=FPS, out="animation.gif", max_side=MAX_SIDE,
        max_pixels=MAX_PIXELS, fade=True):
    """The command's work, every input checked before the model loads and the image's size
    before it is decoded; returns what it wrote.

    Args:
        model, image, arrows: the flags' strings (a model path or None, an image path,
            'x,y,u,v;...').
        max_pixels: largest image (width x height) animated.
        fade: False reads the model out without its learned fade (Propagator's `fade`).
    """
    arrows = inputs.parse_rows(arrows, inputs.ARROW_FIELDS, "--arrows")
    if not isinstance(fade, bool):
        raise ValueError(f"--fade must be True or False; got {fade!r}.")
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 2:
        raise ValueError(f"--frames={frames} must be an integer, at least 2.")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or \
            max_pixels < 1:
        raise ValueError(f"--max_pixels={max_pixels} must be a positive integer.")
    check_fps(fps, "--fps", check_out(out))
    for path in (out, flow_path(out)):  # both written after the model has run
        rundir.check_file_path(path, "--out")
        inputs.check_not_input(path, image)
    # The size is read from the header and checked before decoding; then the whole animation.
    image = inputs.read_image(image, "--image", max_pixels=max_pixels, limit_name="--max_pixels")
    check_render(image.shape[1], image.shape[0], frames, name="--frames")
    inputs.check_inside(arrows, *image.shape[:2], name="--arrows")
    propagator = inputs.load_propagator(model, "--model", max_side=max_side,
                                        fade=None if fade else False)
    flow, animation = animate(propagator, image, arrows, frames, progress=True)
    write_animation(out, animation, fps)
    inputs.write_image(flow_path(out), flow_lib.flow_to_color(flow))
    return out, flow_path(out)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
    f = flags.FLAGS
    written = run(f.model, f.image, f.arrows, f.frames, f.fps, f.out, f.max_side, f.max_pixels,
                  f.fade)
    print("Wrote " + " and ".join(written))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
