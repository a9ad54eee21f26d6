"""Rectified stereo pairs with true disparity as image pairs with exact, boundary-sharp flow.

A video's reference flow comes from a teacher (DIS by default), which blurs motion across
object boundaries; a stereo benchmark's disparity is measured (structured light, laser), so
its depth edges are sharp. Seen as motion from the left view to the right one, a pixel at x
moves to x - d: flow (-d, 0), every pixel moving (as when the camera pans), more where the
scene is nearer. `write_tiles` cuts such a pair into tiles at a few scales and writes a list
file that `evaluate.py --data` reads like any other:

    python -m cmp_tf.data.stereo --left=im0.png --right=im1.png --disparity=disp0.pfm \\
        --out=stereo_tiles
    python evaluate.py --data=stereo_tiles/pairs.txt --pairs=-1

Disparity files: Middlebury's .pfm (infinite where unknown), a NumPy .npy or one-array .npz
(non-finite where unknown), or KITTI's 16-bit .png (disparity x 256, 0 where unknown).
"""
import logging
import os
import re
import zipfile

import cv2
import numpy as np

from cmp_tf import rundir
from cmp_tf.data import formats

SHORT_SIDES = (160, 250, 320)  # the scales tiles are cut at: the pair's short side, px
TILE = 160  # tile side, px: what evaluate.py's default pipeline reads without resizing
STRIDE = 80  # px between tiles
MIN_TILE = 8  # px: smaller tiles hold too little to guide and score
MIN_KNOWN = 400  # known pixels a tile needs: the most guides evaluate.py draws (benchmark.KS)
SCORED = 128  # px: the centre crop evaluate.py scores of a tile (the shipped recipe's data.crop)
SWAPPED_RATIO = 0.8  # the views read as swapped where +d fits them this much better than -d
LIST_FILE = "pairs.txt"
_TILE_FILE = re.compile(r"s\d+_y\d+_x\d+_(left|right|flow)\.png")  # the tiles' names
_PFM_HEADER_TOKENS = 4  # "Pf" or "PF", width, height, scale (its sign the byte order)
log = logging.getLogger(__name__)


def read_disparity(path):
    """Disparity map [H, W] float32 px, NaN where unknown, from .pfm, .npy, .npz or KITTI .png."""
    path = formats.existing_file(path, "Disparity file")
    ext = os.path.splitext(path)[1].lower()
    if ext in (".npy", ".npz"):
        try:
            # Memory-mapped: a header declaring more than the file holds is refused before any
            # allocation (read into memory, NumPy first asks for the whole declared size).
            loaded = np.load(path, mmap_mode="r" if ext == ".npy" else None)
            if ext == ".npz":
                names = loaded.files
                if len(names) != 1:
                    raise ValueError(f"Disparity file {path} holds {len(names)} arrays "
                                     f"({', '.join(names)}); expected one.")
                loaded = loaded[names[0]]
        except ValueError as e:  # cut short, text, pickled objects: NumPy names no file
            if str(e).startswith(f"Disparity file {path} "):
                raise
            raise ValueError(f"Disparity file {path} could not be read as a NumPy array: "
                             f"{e}") from e
        except (OSError, zipfile.BadZipFile, EOFError) as e:  # not a NumPy file, or cut short
            raise ValueError(f"Disparity file {path} could not be read: {e}") from e
        except MemoryError as e:  # an .npz member declaring a huge array
            raise ValueError(f"Disparity file {path} declares an array too large to hold "
                             f"({e}).") from e
        if not np.issubdtype(np.asarray(loaded).dtype, np.number) or np.iscomplexobj(loaded):
            raise ValueError(f"Disparity file {path} must hold real numbers; got dtype "
                             f"{np.asarray(loaded).dtype}.")
        disparity = np.asarray(loaded, np.float32)
    elif ext == ".pfm":
        disparity = read_pfm(path)
    elif ext == ".png":
        raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise ValueError(f"Disparity file {path} could not be decoded "
                             f"({os.path.getsize(path)} bytes).")
        if raw.dtype != np.uint16 or raw.ndim != 2:
            raise ValueError(f"Disparity file {path} is not a 16-bit single-channel KITTI "
                             f"disparity PNG: {raw.dtype} {raw.shape}.")
        disparity = np.where(raw > 0, raw / np.float32(256.0), np.nan).astype(np.float32)
    else:
        raise ValueError(f"Disparity file {path} has an unknown extension {ext!r}; expected "
                         ".pfm, .npy, .npz or .png (16-bit KITTI).")
    if disparity.ndim == 3 and disparity.shape[-1] == 1:
        disparity = disparity[..., 0]
    if disparity.ndim != 2:
        raise ValueError(f"Disparity file {path} must hold one [H, W] map; got shape "
                         f"{disparity.shape}.")
    disparity = np.where(np.isfinite(disparity), disparity, np.nan)
    if (disparity < 0).any():
        raise ValueError(f"Disparity file {path} has {int((disparity < 0).sum())} negative "
                         "values; a left view's disparity is >= 0.")
    if np.isnan(disparity).all():
        raise ValueError(f"Disparity file {path} holds no known disparity.")
    return disparity


def read_pfm(path):
    """A PFM file's values as float32 [H, W] (or [H, W, 3] for "PF"), top row first.

    Read here rather than by OpenCV, which scales the values by the header's scale where
    Middlebury's and Scene Flow's readers take only its sign (the byte order), and fails with
    its own traceback on a header it does not take; every fault names the file.
    """
    with open(path, "rb") as f:
        data = f.read()
    tokens, at = [], 0
    while len(tokens) < _PFM_HEADER_TOKENS and at < len(data):
        if data[at:at + 1].isspace():
            at += 1
        elif data[at:at + 1] == b"#":  # a comment some writers add to the header
            end = data.find(b"\n", at)
            at = len(data) if end < 0 else end + 1
        else:
            end = at
            while end < len(data) and not data[end:end + 1].isspace():
                end += 1
            tokens.append(data[at:end])
            at = end
    at += 1  # the one whitespace byte that ends the header

    def refuse(why):
        return ValueError(f"Disparity file {path} could not be decoded as PFM: {why}.")

    if len(tokens) < _PFM_HEADER_TOKENS or tokens[0] not in (b"Pf", b"PF"):
        raise refuse(f"its header, {b' '.join(tokens)[:40]!r}, is not 'Pf' or 'PF', width, "
                     "height and scale")
    try:
        width, height, scale = int(tokens[1]), int(tokens[2]), float(tokens[3])
    except ValueError:
        raise refuse(f"width, height and scale {b' '.join(tokens[1:])[:40]!r} are not "
                     "numbers") from None
    if width < 1 or height < 1 or not np.isfinite(scale) or scale == 0:
        raise refuse(f"its header gives {width} x {height} px and scale {scale:g}; expected "
                     "a positive size and a nonzero scale")
    channels = 3 if tokens[0] == b"PF" else 1
    needed = width * height * channels * 4
    if data[at - 1:at + 1] == b"\r\n" and len(data) - at == needed + 1:
        at += 1  # a header written with Windows line ends
    if len(data) - at < needed or len(data) - at >= needed + 4:  # a whole value too many
        raise refuse(f"its header, {width} x {height} px in {channels} channel(s), needs "
                     f"{needed} bytes of values; {max(len(data) - at, 0)} follow it")
    values = np.frombuffer(data, "<f4" if scale < 0 else ">f4", width * height * channels, at)
    values = values.reshape(height, width, channels)[::-1].astype(np.float32)  # bottom row first
    return values[..., 0] if channels == 1 else values


def disparity_flow(disparity):
    """(flow [H, W, 2] float32, valid [H, W] bool) from the left view to the right one:
    (-d, 0) where the disparity d is known."""
    disparity = np.asarray(disparity, np.float32)
    valid = np.isfinite(disparity)
    flow = np.zeros(disparity.shape + (2,), np.float32)
    flow[..., 0] = np.where(valid, -disparity, 0.0)
    return flow, valid


def _starts(size, tile, stride):
    """Tile origins along one side: every `stride` px, and one flush with the end."""
    return sorted(set(range(0, size - tile + 1, stride)) | {size - tile})


def check_out(out_dir, overwrite):
    """Returns the files an earlier `write_tiles` left in `out_dir` (its list file and its
    tiles), refusing a whole set without `overwrite`; tiles without the list file, written
    last, are a set cut short, to be written again."""
    earlier = sorted(os.path.join(out_dir, name) for name in os.listdir(out_dir)
                     if name == LIST_FILE or _TILE_FILE.fullmatch(name)
                     ) if os.path.isdir(out_dir) else []
    finished = os.path.join(out_dir, LIST_FILE) in earlier
    if finished and not overwrite:
        raise ValueError(f"--out={out_dir} holds {len(earlier)} files of earlier tiles "
                         f"({os.path.basename(earlier[0])}, ...): pass --overwrite to replace "
                         "them, or choose another --out.")
    return earlier


def check_views(left, right, disparity, what="disparity"):
    """Refuses a disparity no pair can have, and views the disparity does not take from the
    left to the right one (the views swapped, or the right view's disparity given): either
    would be written as tiles whose reference is wrong, and scored without a word."""
    height, width = disparity.shape
    largest = np.nanmax(disparity)
    if largest >= width:
        raise ValueError(f"{what} reaches {largest:g} px, beyond the views' width of {width} "
                         "px: is it stored scaled (KITTI's PNG values are disparity x 256)?")
    known = np.isfinite(disparity)
    rows, cols = np.mgrid[:height, :width].astype(np.float32)
    shift = np.where(known, disparity, 0.0).astype(np.float32)
    errors = []
    for sign in (-1, 1):  # the left view's pixel at x is the right view's at x - d
        to_x = cols + sign * shift
        inside = known & (to_x >= 0) & (to_x <= width - 1)
        if inside.sum() < MIN_KNOWN:
            return  # too little seen in both views to tell
        read = cv2.remap(right, to_x, rows, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        errors.append(np.abs(read.astype(np.float32) - left)[inside].mean())
    if errors[1] < SWAPPED_RATIO * errors[0]:
        raise ValueError(f"The right view matches the left one moved by +d better than by -d "
                         f"(mean colour difference {errors[1]:.1f} against {errors[0]:.1f}): "
                         f"are the views swapped, or is the {what} the right view's?")


def write_tiles(left, right, disparity, out_dir, short_sides=SHORT_SIDES, tile=TILE,
                stride=STRIDE, overwrite=False, min_known=MIN_KNOWN, what="disparity",
                scored=SCORED):
    """Cuts a rectified pair into `tile`-px tiles, every `stride` px, with the pair resized to
    each short side of `short_sides` (disparity scaled with it, resized to the nearest pixel
    so that depth edges stay sharp), and writes left / right PNGs, KITTI flow PNGs (valid
    where the disparity is known) and a list file. Returns the list file's path.

    Args:
        left, right: RGB uint8 [H, W, 3] views; disparity: [H, W] px of the left view, NaN
            where unknown (`read_disparity`); checked by `check_views`.
        overwrite: replace the list file and tiles of an earlier call in `out_dir` (refused
            without it: tiles of other scales would stay beside the new ones).
        min_known: a tile with fewer known pixels is left out (logged): evaluation draws up
            to that many guides on known pixels.
        what: how errors name the disparity (a command names its file).
    """
    left, right = np.asarray(left), np.asarray(right)
    disparity = np.asarray(disparity, np.float32)
    for name, view in (("left", left), ("right", right)):
        if view.dtype != np.uint8 or view.ndim != 3 or view.shape[-1] != 3:
            raise ValueError(f"{name} must be an RGB uint8 [H, W, 3] image; got {view.dtype} "
                             f"{view.shape}.")
    if right.shape != left.shape or disparity.shape != left.shape[:2]:
        raise ValueError(f"left {left.shape[:2]}, right {right.shape[:2]} and {what} "
                         f"{disparity.shape} must be one size.")
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < MIN_TILE:
        raise ValueError(f"tile must be an integer >= {MIN_TILE} px; got {tile!r}.")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive integer; got {stride!r}.")
    if not short_sides or any(isinstance(s, bool) or not isinstance(s, int) or s < tile
                              for s in short_sides):
        raise ValueError(f"short_sides must be integers >= tile={tile}; got {short_sides!r}.")
    if isinstance(min_known, bool) or not isinstance(min_known, int) or min_known < 1:
        raise ValueError(f"min_known must be a positive integer; got {min_known!r}.")
    check_views(left, right, disparity, what)
    for path in check_out(out_dir, overwrite):
        os.remove(path)
    os.makedirs(out_dir, exist_ok=True)
    height, width = disparity.shape
    lines, sparse = [], []
    for short in dict.fromkeys(short_sides):  # each scale once, in the order given
        if short > min(height, width):
            log.warning(f"Short side {short} px is larger than the pair's {min(height, width)} "
                        "px: its tiles are the pair enlarged.")
        scale = short / min(height, width)
        size = (max(tile, round(width * scale)), max(tile, round(height * scale)))  # (w, h)
        views = [cv2.cvtColor(cv2.resize(v, size, interpolation=cv2.INTER_AREA),
                              cv2.COLOR_RGB2BGR) for v in (left, right)]
        # pixel centres on pixel centres, as INTER_AREA's views: INTER_NEAREST reads each
        # cell's top-left source pixel, moving depth edges by up to half a pixel
        flow, valid = disparity_flow(cv2.resize(disparity, size,
                                                interpolation=cv2.INTER_NEAREST_EXACT) * scale)
        for y in _starts(size[1], tile, stride):
            for x in _starts(size[0], tile, stride):
                stem = f"s{short}_y{y}_x{x}"
                window = (slice(y, y + tile), slice(x, x + tile))
                inner = (tile - min(scored, tile)) // 2  # as pipeline.crop centres it
                centre = (slice(y + inner, y + tile - inner), slice(x + inner, x + tile - inner))
                if valid[window].sum() < min_known or valid[centre].sum() < min_known:
                    sparse.append(stem)
                    continue
                for view, side in zip(views, ("left", "right")):
                    image_path = os.path.join(out_dir, f"{stem}_{side}.png")
                    if not cv2.imwrite(image_path, view[window]):
                        raise ValueError(f"OpenCV could not write {image_path}.")
                with open(os.path.join(out_dir, f"{stem}_flow.png"), "wb") as f:
                    f.write(formats.encode_kitti_png(flow[window], valid[window]))
                lines.append(f"{stem}_left.png {stem}_right.png {stem}_flow.png")
    if not lines:
        raise ValueError(f"No tile holds {min_known} pixels of known disparity ({len(sparse)} "
                         "tiles cut): is the disparity mostly unknown?")
    if sparse:
        log.warning(f"Left out {len(sparse)} of {len(sparse) + len(lines)} tiles with fewer "
                    f"than {min_known} pixels of known disparity ({', '.join(sparse[:3])}"
                    f"{', ...' if len(sparse) > 3 else ''}).")
    path = os.path.join(out_dir, LIST_FILE)
    with rundir.whole_file(path) as partial, open(partial, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")  # last and whole: the set is done
    return path


def main(argv):
    from absl import flags

    del argv
    flag = flags.FLAGS
    try:
        short_sides = tuple(int(s) for s in flag.short_sides)
    except ValueError as error:
        raise ValueError(f"--short_sides={','.join(flag.short_sides)} must be whole numbers of "
                         "pixels.") from error
    rundir.check_folder_path(flag.out, "--out")
    check_out(flag.out, flag.overwrite)  # before reading the inputs
    disparity = read_disparity(flag.disparity)
    left, right = formats.read_image(flag.left), formats.read_image(flag.right)
    known = np.isfinite(disparity)
    print(f"Disparity {np.nanmin(disparity):g} to {np.nanmax(disparity):g} px, known at "
          f"{known.mean():.0%} of {known.size} pixels.")
    if np.nanmax(disparity) < 1:
        log.warning(f"--disparity={flag.disparity} stays under 1 px everywhere"
                    + (": a 16-bit PNG is read as KITTI's disparity x 256; one that holds "
                       "plain pixels reads 256 times too small." if flag.disparity.lower()
                       .endswith(".png") else "."))
    path = write_tiles(left, right, disparity, flag.out, short_sides, flag.tile, flag.stride,
                       flag.overwrite, flag.min_known, what=f"--disparity={flag.disparity}")
    with open(path, encoding="utf-8") as f:
        count = sum(1 for line in f if line.strip())
    print(f"{count} tiles of {flag.tile} px in {path}; score them with: python evaluate.py "
          f"--data={path} --pairs=-1")
    return 0


def _define_flags():
    from absl import flags

    flags.DEFINE_string("left", None, "Left view (the image motion is propagated on).",
                        required=True)
    flags.DEFINE_string("right", None, "Right view.", required=True)
    flags.DEFINE_string("disparity", None, "The left view's disparity: .pfm, .npy, .npz or "
                        "16-bit KITTI .png.", required=True)
    flags.DEFINE_string("out", None, "Output folder for the tiles and pairs.txt.",
                        required=True)
    flags.DEFINE_list("short_sides", [str(s) for s in SHORT_SIDES],
                      "Short sides (px) the pair is resized to before cutting tiles.")
    flags.DEFINE_integer("tile", TILE, "Tile side, px.")
    flags.DEFINE_integer("stride", STRIDE, "Pixels between tiles.")
    flags.DEFINE_boolean("overwrite", False, "Replace the tiles an earlier run wrote to --out.")
    flags.DEFINE_integer("min_known", MIN_KNOWN, "Leave out tiles with fewer pixels of known "
                         "disparity (evaluate.py draws up to 400 guides on them).")


if __name__ == "__main__":
    from cmp_tf import cli

    _define_flags()
    cli.run(main)
