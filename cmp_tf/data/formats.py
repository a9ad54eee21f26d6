"""The file boundary: images, flow files, reference list files and videos -> arrays.

Every reader raises ValueError naming the file (and the line, for list files); nothing returns
None. Flow files: Middlebury `.flo`; the reference's pairs of 8-bit images (`flow_x.jpg
flow_y.jpg`, f = p / 255 * 100 - 50); 16-bit KITTI-style PNG (u, v, valid).
"""
import dataclasses
import os

import cv2
import numpy as np

from cmp_tf import flow as flow_lib

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
# KITTI 16-bit flow PNG: channel value p -> (p - 2**15) / 64 px; the third channel is validity.
_KITTI_OFFSET, _KITTI_SCALE = 2.0**15, 64.0


def is_video(path):
    return os.path.splitext(os.fspath(path))[1].lower() in VIDEO_EXTENSIONS


def read_image(path):
    """Reads an image file as RGB uint8 [H, W, 3]."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"Image file {path} does not exist.")
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"Image file {path} could not be decoded ({os.path.getsize(path)} "
                         "bytes).")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _read_gray8(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"Flow image {path} does not exist.")
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"Flow image {path} could not be decoded.")
    if image.ndim == 3:  # some tools save the grey level in three equal channels
        image = image[..., 0]
    if image.dtype != np.uint8:
        raise ValueError(f"Flow image {path} must be 8-bit; got {image.dtype}.")
    return image


def read_kitti_png(path):
    """16-bit KITTI flow PNG -> (flow [H, W, 2] float32, valid [H, W] float32)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"Flow file {path} does not exist.")
    raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if raw is None or raw.dtype != np.uint16 or raw.ndim != 3 or raw.shape[-1] != 3:
        found = "undecodable" if raw is None else f"{raw.dtype} {raw.shape}"
        raise ValueError(f"Flow file {path} is not a 16-bit 3-channel KITTI flow PNG: {found}.")
    bgr = raw.astype(np.float32)
    flow = (bgr[..., [2, 1]] - _KITTI_OFFSET) / _KITTI_SCALE  # OpenCV reads B, G, R = valid, v, u
    return flow, (bgr[..., 0] > 0).astype(np.float32)


def encode_kitti_png(flow, valid):
    """[H, W, 2] flow + [H, W] validity -> 16-bit KITTI PNG bytes (1/64 px steps, +-512 px)."""
    flow = flow_lib.check_flow(flow)
    q = np.clip(np.round(flow * _KITTI_SCALE + _KITTI_OFFSET), 0, 2**16 - 1).astype(np.uint16)
    valid = (np.asarray(valid) > 0).astype(np.uint16)
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
    paths = tuple(os.fspath(p) for p in paths)
    if len(paths) == 2:
        flow = flow_lib.decode_flow_8bit(_read_gray8(paths[0]), _read_gray8(paths[1]))
        return flow, np.ones(flow.shape[:2], np.float32)
    if len(paths) != 1:
        raise ValueError(f"Flow is one .flo / .png file or two 8-bit images; got {paths}.")
    ext = os.path.splitext(paths[0])[1].lower()
    if ext == ".flo":
        flow = flow_lib.read_flo(paths[0])
        return flow, np.ones(flow.shape[:2], np.float32)
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
        raise ValueError(f"List file {path} does not exist.")
    root = os.path.dirname(os.path.abspath(path))
    entries, skipped = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
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
        raise ValueError(f"List file {path} has no usable entries ({len(skipped)} skipped).")
    return entries, skipped


def read_pair(entry):
    """Loads a PairEntry: (image1, image2 uint8 RGB, flow float32, valid float32), checked."""
    image1, image2 = read_image(entry.image1), read_image(entry.image2)
    flow, valid = read_flow(entry.flow)
    if image1.shape != image2.shape or image1.shape[:2] != flow.shape[:2]:
        raise ValueError(f"{entry.source}: sizes differ: {entry.image1} {image1.shape[:2]}, "
                         f"{entry.image2} {image2.shape[:2]}, flow {flow.shape[:2]}.")
    return image1, image2, flow, valid


def read_video(path, max_side=-1):
    """Decodes every frame of a video as RGB uint8, resized so the longer side <= max_side.

    Returns:
        (frames list of [H, W, 3] uint8, expected frame count from the container, -1 if unknown):
        fewer frames than expected means the file is truncated or a frame failed to decode.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"Video file {path} does not exist.")
    capture = cv2.VideoCapture(path)
    try:
        if not capture.isOpened():
            raise ValueError(f"Video file {path} could not be opened by OpenCV.")
        expected = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or -1)
        frames = []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if max_side > 0 and max(frame.shape[:2]) > max_side:
                scale = max_side / max(frame.shape[:2])
                size = (round(frame.shape[1] * scale), round(frame.shape[0] * scale))
                frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    if len(frames) < 2:
        raise ValueError(f"Video file {path} has {len(frames)} decodable frames; need at least 2.")
    return frames, expected


def list_videos(paths):
    """Expands files and folders (searched recursively) into a sorted list of video files."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    videos = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            for folder, _, names in os.walk(path):
                videos += [os.path.join(folder, n) for n in names if is_video(n)]
        elif os.path.isfile(path):
            videos.append(path)
        else:
            raise ValueError(f"Video path {path} does not exist.")
    return sorted(set(videos))
