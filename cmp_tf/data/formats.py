"""The file boundary: images, flow files, reference list files and videos -> arrays.

Every reader raises ValueError naming the file (and the line, for list files); nothing returns
None. Flow files: Middlebury `.flo` (components of 1e9 px or more mark unknown flow); the
reference's pairs of 8-bit images (`flow_x.jpg flow_y.jpg`, f = p / 255 * 100 - 50); 16-bit
KITTI-style PNG (u, v, valid). Flow readers return (flow, valid); unknown .flo pixels hold zero
flow, so no resize or crop spreads the marker value into real motion.
"""
import dataclasses
import decimal
import os
import re

import cv2
import numpy as np

from cmp_tf import flow as flow_lib

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv",
                    ".ogv")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
# KITTI 16-bit flow PNG: channel value p -> (p - 2**15) / 64 px; the third channel is validity.
KITTI_OFFSET, KITTI_SCALE = 2.0**15, 64.0
# Middlebury .flo header: a float32 tag, then int32 width and height (12 bytes in all).
FLO_TAG = 202021.25
FLO_HEADER_BYTES = 12
# Middlebury marks unknown flow with huge components (1e10 in its tools; >= this is unknown).
FLO_UNKNOWN_THRESHOLD = 1e9
FLO_UNKNOWN_VALUE = 1e10
# The reference's 8-bit flow images hold f = pixel / 255 * range - fmax with this range (px).
FLOW_8BIT_FMAX = 50.0


def is_video(path):
    return os.path.splitext(os.fspath(path))[1].lower() in VIDEO_EXTENSIONS


def _hidden(name):
    """A name a folder's listing leaves out: hidden files, among them the metadata a copy from
    macOS leaves beside each file (`._clip.mp4`), which is no video or frame."""
    return name.startswith(".")


def _natural_key(name):
    """'frame2' before 'frame10': numbers in a name compare as numbers, decimal ones too
    (timestamps: '1617283945.25' before '1617283945.5')."""
    parts = re.split(r"(\d+(?:\.\d+)?)", name)  # text, number, text, ...: alike at each place
    return [decimal.Decimal(part) if index % 2 else part.lower()
            for index, part in enumerate(parts)]


def frame_files(folder):
    """The image files directly in `folder`, in frame order (numbers in names compare as
    numbers): a clip stored as one image per frame, as DAVIS, Sintel or KITTI ship them."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"Frame folder {folder} " + ("is a file, not a folder." if
                                                      os.path.exists(folder) else
                                                      "does not exist."))
    names = [n for n in os.listdir(folder) if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS
             and not _hidden(n)
             and os.path.isfile(os.path.join(folder, n))]
    return [os.path.join(folder, n) for n in _in_frame_order(names)]


def _in_frame_order(names):
    """`names` sorted by `_natural_key`. Two names equal as decimals ('cam1.1', 'cam1.10') are
    not timestamps but dotted counters: then every run of digits counts on its own, so
    'cam1.2' comes before 'cam1.10' (and the name itself breaks any tie left)."""
    ordered = sorted(names, key=_natural_key)
    if all(_natural_key(a) != _natural_key(b) for a, b in zip(ordered, ordered[1:])):
        return ordered
    return sorted(names, key=lambda n: ([int(p) if p.isdigit() else p.lower()
                                         for p in re.split(r"(\d+)", n)], n))


_PNG_SIGNATURE, _PNG_COLOUR_TYPE_AT, _PNG_PALETTE = b"\x89PNG\r\n\x1a\n", 25, 3


def _is_palette_png(path):
    """Whether `path` is an indexed-colour PNG: how DAVIS, YouTube-VOS and VOC store label
    maps beside their frames (the IHDR chunk's colour type, no pixel decoded)."""
    with open(path, "rb") as f:
        head = f.read(_PNG_COLOUR_TYPE_AT + 1)
    return head.startswith(_PNG_SIGNATURE) and len(head) > _PNG_COLOUR_TYPE_AT and \
        head[_PNG_COLOUR_TYPE_AT] == _PNG_PALETTE


def is_frame_folder(path):
    """A folder holding at least two images and no video: one clip, a file per frame. A folder
    of indexed-colour PNGs is a dataset's label maps (DAVIS's Annotations/), not a clip."""
    path = os.fspath(path)
    if not os.path.isdir(path) or any(is_video(n) and not _hidden(n)
                                      for n in os.listdir(path)):
        return False
    files = frame_files(path)
    return len(files) >= 2 and not _is_palette_png(files[0])


_JPEG_START, _JPEG_END = b"\xff\xd8", b"\xff\xd9"


def truncated_jpeg(head, tail):
    """Whether a file that starts with `head` and ends with `tail` (a few bytes each) is a JPEG
    cut short: it lacks the end-of-image marker. OpenCV decodes such a file with the missing
    part grey and only a warning on stderr."""
    return head.startswith(_JPEG_START) and not tail.rstrip(b"\0 \t\r\n").endswith(_JPEG_END)


def truncated_jpeg_file(path):
    """`truncated_jpeg` of the file at `path`, from its first and last bytes."""
    with open(path, "rb") as f:
        head = f.read(len(_JPEG_START))
        f.seek(max(0, os.path.getsize(path) - 64))
        return truncated_jpeg(head, f.read())


def existing_file(path, kind):
    """`path` as a string where it names a file; ValueError naming it as `kind` ("Image file")
    where it is not a path, is a folder or is not there."""
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{kind} path must be a str or os.PathLike; got "
                         f"{type(path).__name__} {str(path)[:60]!r}.")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{kind} {path} is a folder, not a file.")
    if not os.path.isfile(path):
        raise ValueError(f"{kind} {path!r} does not exist." if not path.strip() else
                         f"{kind} {path} does not exist.")
    return opencv_readable_name(path, kind)


def opencv_readable_name(path, kind):
    """`path` where OpenCV can open it by name: a name that is not UTF-8 (a Latin-1 name from
    an old archive, which Python holds with surrogates) crashes OpenCV's readers outright,
    taking the whole process with it, so it is refused here, naming the file."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{kind} {path!r} has a name that is not UTF-8, which OpenCV cannot "
                         "open: rename it.") from None
    return path


def read_image(path):
    """Reads an image file as RGB uint8 [H, W, 3]; ValueError for a file that is missing, does
    not decode, or is a JPEG cut short."""
    path = existing_file(path, "Image file")
    if truncated_jpeg_file(path):
        raise ValueError(f"Image file {path} is a JPEG cut short (no end-of-image marker, "
                         f"{os.path.getsize(path)} bytes).")
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"Image file {path} could not be decoded ({os.path.getsize(path)} "
                         "bytes).")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


# Channels of a grey flow image saved as colour may differ this much (JPEG's chroma rounding).
_GREY_CHANNELS_APART = 8


def _read_gray8(path):
    path = existing_file(path, "Flow image")
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"Flow image {path} could not be decoded.")
    if image.dtype != np.uint8:
        raise ValueError(f"Flow image {path} must be 8-bit; got {image.dtype}.")
    if image.ndim == 3:  # some tools save the grey level in three equal channels
        colour = image[..., :3].astype(np.int16)
        apart = int(np.abs(colour - colour.mean(-1, keepdims=True)).max())
        if apart > _GREY_CHANNELS_APART:  # a colour picture of flow: its blue is no motion
            raise ValueError(f"Flow image {path} is in colour (its channels differ by up to "
                             f"{apart} levels); an 8-bit flow image is grey, one component "
                             "per image.")
        image = image[..., 0]
    return image


def read_flo(path):
    """Reads a Middlebury .flo file, checking the header and the size.

    Returns:
        (flow [H, W, 2] float32 px, valid [H, W] float32): pixels whose u or v is unknown
        (|value| >= FLO_UNKNOWN_THRESHOLD, Middlebury's convention) have valid 0 and flow 0.
    Raises:
        ValueError: naming the file for a missing, foreign, truncated or NaN-holding file.
    """
    path = existing_file(path, "Flow file")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        header = f.read(FLO_HEADER_BYTES)
    if len(header) < FLO_HEADER_BYTES:
        raise ValueError(f"Flow file {path} is truncated: {size} bytes, shorter than the "
                         f"{FLO_HEADER_BYTES}-byte .flo header.")
    tag = np.frombuffer(header[:4], "<f4")[0]
    width, height = (int(x) for x in np.frombuffer(header[4:], "<i4"))
    if tag != np.float32(FLO_TAG):
        raise ValueError(f"Flow file {path} is not a .flo file: tag {tag!r} (bytes "
                         f"{header[:4].hex()}), expected {FLO_TAG}.")
    if width <= 0 or height <= 0:
        raise ValueError(f"Flow file {path} has an invalid size {width}x{height} in its header.")
    expected = FLO_HEADER_BYTES + 8 * width * height
    if size != expected:
        raise ValueError(f"Flow file {path} is {'truncated' if size < expected else 'too long'}: "
                         f"{size} bytes, expected {expected} for {width}x{height}.")
    flow = cv2.readOpticalFlow(path)
    if flow is None or flow.shape != (height, width, 2):
        raise ValueError(f"Flow file {path} could not be decoded by OpenCV.")
    nan = int(np.isnan(flow).sum())
    if nan:
        raise ValueError(f"flow in {path} has {nan} NaN values.")
    unknown = (np.abs(flow) >= FLO_UNKNOWN_THRESHOLD).any(-1)  # inf included
    flow[unknown] = 0.0
    return flow_lib.check_flow(flow, name=f"flow in {path}"), (~unknown).astype(np.float32)


def _known(valid, shape):
    """[H, W] bool: where a flow writer's `valid` map says the flow is known (> 0); ValueError
    for a map of another shape or one holding NaN (neither known nor unknown)."""
    valid = np.asarray(valid)
    if valid.shape != tuple(shape):
        raise ValueError(f"valid must have shape {tuple(shape)}; got {valid.shape}.")
    numeric = valid.dtype == bool or np.issubdtype(valid.dtype, np.number)
    if not numeric or not np.isfinite(valid.astype(np.float64)).all():
        raise ValueError(f"valid must be finite numbers (0: unknown); got dtype {valid.dtype} "
                         "with NaN or infinite values.")
    return valid > 0


def write_flo(path, flow, valid=None):
    """Writes [H, W, 2] flow as a Middlebury .flo file; where `valid` is 0 the flow is written
    as unknown (FLO_UNKNOWN_VALUE), as Middlebury's tools do."""
    flow = flow_lib.check_flow(flow)
    if flow.ndim != 3:
        raise ValueError(f"flow must have shape [H, W, 2]; got {flow.shape}.")
    known = np.ones(flow.shape[:2], bool) if valid is None else _known(valid, flow.shape[:2])
    too_large = known & (np.abs(flow) >= FLO_UNKNOWN_THRESHOLD).any(-1)
    if too_large.any():  # it would read back as unknown
        raise ValueError(f"flow has {int(too_large.sum())} known pixels of |u| or |v| >= "
                         f"{FLO_UNKNOWN_THRESHOLD:g} px, which .flo reserves for unknown flow.")
    if valid is not None:
        flow = np.where(known[..., None], flow, np.float32(FLO_UNKNOWN_VALUE))
    path = os.fspath(path)
    if not path.lower().endswith(".flo"):
        raise ValueError(f"path must name a .flo file (Middlebury flow); got {path}.")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder):
        raise ValueError(f"path {path} " + ("is a folder." if os.path.isdir(path) else
                                            f"lies in {folder}, which is not a folder."))
    if not cv2.writeOpticalFlow(path, np.ascontiguousarray(flow)):
        raise ValueError(f"OpenCV could not write the flow file {path}.")


def decode_flow_8bit(x, y):
    """Reference 8-bit flow images (one per axis) -> [H, W, 2] flow: f = p / 255 * 100 - 50.

    Quantum 100 / 255 = 0.39 px; values beyond +-50 px were clipped when the files were written.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"flow_x and flow_y must be single-channel images of one size; got "
                         f"{x.shape} and {y.shape}.")
    if x.dtype != np.uint8 or y.dtype != np.uint8:
        raise ValueError(f"8-bit flow images must be uint8; got {x.dtype} and {y.dtype}.")
    scale = 2 * FLOW_8BIT_FMAX / 255.0
    return np.stack([x, y], -1).astype(np.float32) * scale - FLOW_8BIT_FMAX


def encode_flow_8bit(flow):
    """[H, W, 2] flow -> (flow_x, flow_y) uint8 images in the reference's encoding (clipped)."""
    flow = flow_lib.check_flow(flow)
    pixels = np.round((flow + FLOW_8BIT_FMAX) / (2 * FLOW_8BIT_FMAX) * 255.0)
    pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    return pixels[..., 0], pixels[..., 1]


def read_kitti_png(path):
    """16-bit KITTI flow PNG -> (flow [H, W, 2] float32, valid [H, W] float32)."""
    path = existing_file(path, "Flow file")
    raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if raw is None or raw.dtype != np.uint16 or raw.ndim != 3 or raw.shape[-1] != 3:
        found = "undecodable" if raw is None else f"{raw.dtype} {raw.shape}"
        raise ValueError(f"Flow file {path} is not a 16-bit 3-channel KITTI flow PNG: {found}.")
    bgr = raw.astype(np.float32)
    flow = (bgr[..., [2, 1]] - KITTI_OFFSET) / KITTI_SCALE  # OpenCV reads B, G, R = valid, v, u
    valid = (bgr[..., 0] > 0).astype(np.float32)
    # Invalid pixels store 0, read as -512 px: zeroed, as .flo's unknown pixels are, so no
    # resize or crop spreads that value into real motion.
    return flow * valid[..., None], valid


def kitti_codable(flow):
    """[H, W] bool: where the motion fits KITTI's 16-bit encoding (+-512 px), the range every
    training pair has once ingested into shards; beyond it a pair's flow counts as unknown."""
    coded = np.round(np.asarray(flow, np.float64) * KITTI_SCALE + KITTI_OFFSET)
    return ((coded >= 0) & (coded <= 2**16 - 1)).all(-1)


def fill_unknown_flow(flow, valid):
    """`flow` with each unknown pixel given its nearest known pixel's flow. A list's files hold
    0 where flow is unknown (KITTI's sparse flow, a stereo pair's occlusions), which the
    pipeline's bilinear resize would blend into the known flow beside it. A video's shards hold
    the teacher's own estimate there; a list converted to shards holds this fill
    (`ingest.convert_list`), so both ways of reading a list train on the same targets."""
    unknown = (np.asarray(valid) <= 0).astype(np.uint8)
    if not unknown.any() or unknown.all():
        return flow
    _, nearest = cv2.distanceTransformWithLabels(unknown, cv2.DIST_L2, cv2.DIST_MASK_5,
                                                 labelType=cv2.DIST_LABEL_PIXEL)
    known = unknown == 0
    of_label = np.zeros((nearest.max() + 1, 2), np.float32)  # each known pixel has its label
    of_label[nearest[known]] = flow[known]
    return np.where(known[..., None], flow, of_label[nearest]).astype(np.float32)


def encode_kitti_png(flow, valid):
    """[H, W, 2] flow + [H, W] validity -> 16-bit KITTI PNG bytes (1/64 px steps, +-512 px).
    A pixel whose motion lies beyond that range is written invalid, not clipped to a wrong
    motion that reads back as valid."""
    flow = flow_lib.check_flow(flow)
    if flow.ndim != 3:
        raise ValueError(f"flow must have shape [H, W, 2]; got {flow.shape}.")
    known = _known(valid, flow.shape[:2])  # NaN was written as invalid, where .flo refused it
    coded = np.round(flow * KITTI_SCALE + KITTI_OFFSET)
    q = np.clip(coded, 0, 2**16 - 1).astype(np.uint16)
    valid = (known & kitti_codable(flow)).astype(np.uint16)
    ok, data = cv2.imencode(".png", np.dstack([valid, q[..., 1], q[..., 0]]))  # B, G, R
    if not ok:
        raise ValueError("OpenCV could not encode the flow as PNG.")
    return data.tobytes()


def read_flow(paths):
    """Reads flow from one file (.flo or KITTI .png) or an (x, y) pair of 8-bit images.

    Returns:
        (flow [H, W, 2] float32 px, valid [H, W] float32).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = (paths,)
    if not isinstance(paths, (list, tuple)) or not all(
            isinstance(p, (str, os.PathLike)) for p in paths):
        raise ValueError(f"paths must be a flow file's path or an (x, y) pair of 8-bit flow "
                         f"images' paths; got {str(paths)[:80]!r}.")
    paths = tuple(os.fspath(p) for p in paths)
    if len(paths) == 2:
        x, y = _read_gray8(paths[0]), _read_gray8(paths[1])
        if x.shape != y.shape:  # decode_flow_8bit's own words name no file
            raise ValueError(f"Flow images {paths[0]} ({x.shape[1]}x{x.shape[0]} px) and "
                             f"{paths[1]} ({y.shape[1]}x{y.shape[0]} px) differ in size; an "
                             "(x, y) pair of 8-bit flow images is one size.")
        flow = decode_flow_8bit(x, y)
        return flow, np.ones(flow.shape[:2], np.float32)
    if len(paths) != 1:
        raise ValueError(f"Flow is one .flo / .png file or two 8-bit images; got {paths}.")
    ext = os.path.splitext(paths[0])[1].lower()
    if ext == ".flo":
        return read_flo(paths[0])
    if ext == ".png":
        return read_kitti_png(paths[0])
    raise ValueError(f"Flow file {paths[0]} has an unknown extension {ext!r}; expected .flo, "
                     ".png (16-bit KITTI) or a pair of 8-bit images.")


@dataclasses.dataclass(frozen=True)
class PairEntry:
    """One training pair of a list file: frame t, frame t+1 and its flow file(s)."""

    image1: str
    image2: str
    flow: tuple
    source: str  # "list.txt:LINE", for error messages


def read_list(path, on_missing="raise"):
    """Parses a reference list file: lines `img1 img2 flow.flo` or `img1 img2 fx.jpg fy.jpg`.

    Relative paths are resolved against the list file's folder. Blank lines and lines starting
    with '#' are skipped.

    Args:
        on_missing: "raise" stops at a line naming a missing file; "skip" leaves it out.
    Returns:
        (entries: list of PairEntry, skipped: "file:line: reason" for each line left out).
    Raises:
        ValueError: naming the file and line for a malformed line or a missing file.
    """
    if on_missing not in ("raise", "skip"):
        raise ValueError(f"on_missing must be 'raise' or 'skip'; got {on_missing!r}.")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"List file {path} " + ("is a folder, not a text file." if
                                                  os.path.isdir(path) else "does not exist."))
    root = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, encoding="utf-8-sig") as f:  # a BOM (Notepad's) is not a path
            lines = f.readlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"List file {path} is not UTF-8 text (byte {error.start}): a list "
                         "file names one pair per line.") from error
    entries, skipped = [], []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        where = f"{path}:{number}"
        if len(fields) not in (3, 4):
            raise ValueError(f"{where}: expected 'img1 img2 flow.flo' or 'img1 img2 flow_x "
                             f"flow_y'; got {len(fields)} fields: {line.strip()!r}.")
        files = [f if os.path.isabs(f) else os.path.join(root, f) for f in fields]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing and on_missing == "raise":
            raise ValueError(f"{where}: missing file {missing[0]}.")
        if missing:
            skipped.append(f"{where}: missing file {missing[0]}")
            continue
        entries.append(PairEntry(files[0], files[1], tuple(files[2:]), where))
    if not entries:
        first = f"; the first, {skipped[0]} (a relative path is read from the list's folder)" \
            if skipped else ""
        raise ValueError(f"List file {path} has no usable entries ({len(skipped)} skipped"
                         f"{first}).")
    return entries, skipped


def read_pair(entry):
    """Loads a PairEntry: (image1, image2 uint8 RGB, flow float32, valid float32), checked."""
    image1, image2 = read_image(entry.image1), read_image(entry.image2)
    flow, valid = read_flow(entry.flow)
    if image1.shape != image2.shape or image1.shape[:2] != flow.shape[:2]:
        raise ValueError(f"{entry.source}: sizes differ: {entry.image1} {image1.shape[:2]}, "
                         f"{entry.image2} {image2.shape[:2]}, flow {flow.shape[:2]}.")
    return image1, image2, flow, valid


def stream_video(path, max_side=-1):
    """Opens a video, or a folder of frames (`is_frame_folder`), to decode its frames one at a
    time (RGB uint8, resized so the longer side <= max_side): what a long clip needs, where
    `read_video` would hold every frame at once.

    A file that is missing or that OpenCV cannot open is refused here, before any frame; a
    frame image that does not decode, or whose size is not the first frame's, when it comes.

    Returns:
        (iterator of [H, W, 3] uint8 frames, expected frame count from the container or the
        folder, -1 if unknown): fewer frames than expected means the file is truncated or a
        frame failed to decode.
    """
    path = os.fspath(path)
    if isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer)) or \
            not (max_side == -1 or max_side >= 1):
        raise ValueError(f"max_side must be -1 (keep the size) or a whole number of pixels "
                         f">= 1; got {max_side!r}.")
    if os.path.isdir(path):
        if not is_frame_folder(path):
            raise ValueError(f"Folder {path} is not a clip of frames: it needs at least two "
                             f"images ({', '.join(IMAGE_EXTENSIONS)}) and no video file.")
        files = frame_files(path)
        return (_resized(frame, max_side) for frame in _frames_of(files)), len(files)
    capture = cv2.VideoCapture(existing_file(path, "Video file"))
    if not capture.isOpened():
        capture.release()
        raise ValueError(f"Video file {path} could not be opened by OpenCV.")
    expected = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or -1)

    def frames():
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    return
                yield _resized(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), max_side)
        finally:
            capture.release()

    return frames(), max(expected, -1)


def _frames_of(files):
    """A folder's frame images in order, each the size of the first (a clip has one size)."""
    size = None
    for path in files:
        frame = read_image(path)
        if size is None:
            size = frame.shape
        elif frame.shape != size:
            raise ValueError(f"Frame {path} is {frame.shape[1]}x{frame.shape[0]} px; the "
                             f"clip's first frame, {files[0]}, is {size[1]}x{size[0]}.")
        yield frame


def _resized(frame, max_side):
    if max_side > 0 and max(frame.shape[:2]) > max_side:
        scale = max_side / max(frame.shape[:2])
        size = (max(1, round(frame.shape[1] * scale)), max(1, round(frame.shape[0] * scale)))
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    return frame


def video_frame_count(path):
    """The frame count a video's container states, or a frame folder's images (-1 if unknown
    or unreadable); reads no frame, so a progress bar can be sized before decoding."""
    if os.path.isdir(path):
        return len(frame_files(path))
    try:
        capture = cv2.VideoCapture(opencv_readable_name(os.fspath(path), "Video file"))
    except ValueError:
        return -1  # refused, naming it, when its frames are read
    try:
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or -1) if capture.isOpened() else -1
    finally:
        capture.release()
    return max(count, -1)


def check_frame_count(path, count):
    """A clip needs two frames to give one pair."""
    if count < 2:
        kind = "Frame folder" if os.path.isdir(path) else "Video file"
        raise ValueError(f"{kind} {os.fspath(path)} has {count} decodable frames; need at "
                         "least 2.")


def read_video(path, max_side=-1):
    """Decodes every frame of a video at once (see `stream_video` for long clips).

    Returns:
        (frames list of [H, W, 3] uint8, expected frame count from the container, -1 if unknown).
    """
    stream, expected = stream_video(path, max_side)
    frames = list(stream)
    check_frame_count(path, len(frames))
    return frames, expected


def list_videos(paths):
    """Expands files and folders (searched recursively, linked folders too) into a sorted
    list of clips: video files, and folders of frames (`is_frame_folder`: at least two images
    and no video)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    videos = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            # normalized: `clips/bear/` and `clips/bear` are one clip (one name, one key)
            seen = set()  # folders by real path: a link back up would walk forever
            for folder, subfolders, names in os.walk(os.path.normpath(path), followlinks=True):
                if os.path.realpath(folder) in seen:
                    subfolders[:] = []
                    continue
                seen.add(os.path.realpath(folder))
                videos += [os.path.join(folder, n) for n in names
                           if is_video(n) and not _hidden(n)]
                if is_frame_folder(folder):
                    videos.append(folder)
        elif os.path.isfile(path):
            videos.append(path)
        else:
            raise ValueError(f"Video path {path} does not exist.")
    return sorted(set(videos))
