"""tf.data: shards, list files or videos -> decode -> resize, crop, flip -> guidance -> batches.

Elements are ({"image": [H, W, 3] float32 0..255, "sparse": [H, W, 3] (u, v, mask)},
{"flow": [H, W, 2] px, "valid": [H, W]}), batched to fixed shapes.

Resumable: every random choice of element i (crop, flip, guidance) is seeded by (config.seed,
i), and the shuffled order depends on config.seed only, so `start_step` skips the records
already consumed (before they are decoded) and a resumed run sees the same samples as an
uninterrupted one. tf.data cannot checkpoint pipelines holding `tf.numpy_function` state;
this needs no state.

Unreadable data is counted, named and bounded, never looped over: a shard that cannot be read
to its end (a flipped byte ends a TFRecord file's framing), or that ends cleanly short of the
count its ingestion sidecar lists, is logged with its path and the number of records lost; a
list entry that fails to load is logged with its line; a run of `data.max_bad_in_a_row`
unreadable samples stops the pipeline with an error naming the last one, as does a validation
set with no readable sample. With `data.on_error="raise"` the first one stops it.
"""
import collections
import glob
import math
import os
import re
import sys

import numpy as np
import tensorflow as tf

from cmp_tf import data as data_lib
from cmp_tf import rundir
from cmp_tf.data import formats
from cmp_tf.data import ingest as ingest_lib
from cmp_tf.data import layered as layered_lib
from cmp_tf.data import records as records_lib
from cmp_tf.data import sampling
from cmp_tf.data import shards as shards_lib

# What a handle's `entry` holds beside its record: a list entry's index (>= 0), or a kind.
_RECORD = -1  # a shard record
_BROKEN_SHARD = -2  # a shard that could not be read to its end; the record says which and why
_END = -3  # the end of a finite (validation) stream
# A run of this many unreadable samples in a row means a source is broken, not noisy: stop
# with its name instead of drawing from it forever (repeat() would never yield a batch).
MAX_BAD_IN_A_ROW = 32
# TFRecord framing around each record: length (8 bytes) + its CRC (4), data, data CRC (4).
_RECORD_FRAMING_BYTES = 16
_SEED_STRIDE = 1_000_003  # guidance seed = config.seed * stride + element index
_LAYERED_STREAM = 7  # numpy seed-sequence prefix of the layered scenes (guidance uses none)


# The random choices made for one training element, each drawing from its own stream: a number
# two choices shared tied them (layered scenes and flow reversal drew one number, so with half
# the samples layered no video sample kept was reversed).
STREAMS = dict(crop_top=0, crop_left=1, flip=2, zoom=3, rotate_image=4, layered=5,
               flow_scale=6, flow_rotate_angle=7, flow_rotate=8, flow_reverse=9)


def draw(seed, purpose, low=0.0, high=1.0, dtype=tf.float32, streams=STREAMS):
    """One number, uniform in [low, high), from the stateless stream of one element's seed pair
    kept for `purpose` (a name in `streams`): each random choice independent of the others.
    (Adding offsets to the pair would reuse the neighbouring elements' streams.)"""
    stream = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), streams[purpose])
    return tf.random.stateless_uniform([], stream, low, high, dtype)


def _shards_in(folder):
    return sorted(glob.glob(os.path.join(folder, "*.tfrecord")))


def _check_shard_sizes(folder, on_error, found, field):
    """Shards listed by ingestion sidecars must exist with some bytes; returns the good ones.

    `found` holds the folder's shard files: those no sidecar lists are named in a warning
    (shards copied in without their sidecar are not read)."""
    good = []
    sidecars = shards_lib.read_sidecars(folder)[0]
    by_source = collections.defaultdict(list)
    for record in sidecars:
        by_source[record["video"]].append(f"{record['key']}.json")
    for source, names in by_source.items():
        if len(names) > 1:
            raise ValueError(
                f"Shard folder {folder} holds {len(names)} ingestions of {source} "
                f"({', '.join(names)}: other ingest configs, or earlier versions of the file); "
                "reading the folder would feed its pairs that many times. Keep one: ingest each "
                "config into its own folder, or delete the other sidecars and the shards they "
                "list.")
    for record in sidecars:
        sidecar = os.path.join(folder, f"{record['key']}.json")
        for shard in record["shards"]:
            path = os.path.join(folder, shard)
            if not os.path.isfile(path) or os.path.getsize(path) == 0:
                if on_error == "raise":
                    raise ValueError(f"Shard {path} listed in {sidecar} is missing or empty.")
                tf.get_logger().warning(f"Skipping missing or empty shard {path}.")
                continue
            good.append(path)
    listed = {shard for record in sidecars for shard in record["shards"]}
    unlisted = [os.path.basename(p) for p in found if os.path.basename(p) not in listed]
    if good and unlisted:
        tf.get_logger().warning(
            f"{field}: {len(unlisted)} shards in {folder} are listed by no ingestion sidecar "
            f"and are not read ({', '.join(unlisted[:3])}{', ...' if len(unlisted) > 3 else ''})"
            ": copy in their sidecars (<key>.json) to train on them, or remove them.")
    return good


def _expected_records(shards):
    """Records each shard holds by its ingestion sidecar (-1 where no sidecar says)."""
    counts = {}
    for folder in sorted({os.path.dirname(os.path.abspath(p)) for p in shards}):
        for record in shards_lib.read_sidecars(folder)[0]:
            for shard, count in zip(record["shards"], record.get("shard_pairs", [])):
                counts[os.path.join(folder, shard)] = count
    return [counts.get(os.path.abspath(p), -1) for p in shards]


def expected_pairs(shards, entries):
    """Pairs one pass over `resolve_sources`' (shards, entries) reads, by the shards' ingestion
    sidecars and the list entries; None where a shard has no sidecar to say. Sizes a progress
    bar before anything is decoded."""
    counts = _expected_records(shards) if shards else []
    return None if any(count < 0 for count in counts) else sum(counts) + len(entries)


def _text(*parts):
    """Joins strings and numbers (tensors or Python) into one string tensor, unquoted."""
    return tf.strings.join([p if isinstance(p, str) or getattr(p, "dtype", None) == tf.string
                            else tf.strings.as_string(p) for p in parts])


def _read_shard(path, size, expected):
    """A shard's records as handles, then, if it could not be read to its end or holds other
    than the `expected` count (its sidecar's; -1: unknown), one _BROKEN_SHARD handle whose
    record names the file, the first bad record and what was lost.

    TFRecordDataset stops at the first corrupt record (nothing after it can be framed); the
    bytes read so far, against the file size, tell whether it did.
    """
    reads = tf.data.TFRecordDataset(path).map(lambda r: (r, False)).ignore_errors()
    ends = reads.concatenate(tf.data.Dataset.from_tensors((tf.constant(b""), True)))

    def count(state, element):
        n, done = state
        record, last = element
        step = tf.cast(tf.strings.length(record), tf.int64) + _RECORD_FRAMING_BYTES
        new = (n + tf.cast(~last, tf.int64), done + tf.where(last, tf.constant(0, tf.int64), step))
        return new, (record, last, n, done)

    def keep(record, last, n, done):
        # Read to its end, a shard may still hold other than its sidecar's count: cut at a
        # record's boundary (a copy that stopped there), or another shard put in its place.
        return ~last | (done != size) | ((expected >= 0) & (n != expected))

    def handle(record, last, n, done):
        def why():
            lost = tf.cond(
                expected >= 0,
                lambda: _text("its other ", expected - n, " of ", expected, " records are lost"),
                lambda: _text("the remaining ", size - done, " of ", size, " bytes are lost"))
            corrupt = _text("Shard ", path, ": record ", n + 1, " (at byte ", done, ") is "
                            "corrupt or truncated; ", lost, " (", n, " read).")
            miscounted = _text("Shard ", path, " ends after ", n, " records where its sidecar "
                               "lists ", expected, ": it was cut short or replaced since it "
                               "was ingested (", tf.maximum(expected - n, 0), " lost).")
            return tf.where(done != size, corrupt, miscounted)

        return (tf.cond(last, why, lambda: record),
                tf.where(last, tf.constant(_BROKEN_SHARD, tf.int64),
                         tf.constant(_RECORD, tf.int64)))

    counted = ends.scan((tf.constant(0, tf.int64), tf.constant(0, tf.int64)), count)
    return counted.filter(keep).map(handle)


def check_sources(paths, field="config.data.train"):
    """Fails fast (before any ingestion or training) on empty, missing or unknown sources, a
    folder holding neither shards nor videos and a list file that does not read as one."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not isinstance(paths, (list, tuple)) or not all(
            isinstance(path, (str, os.PathLike)) for path in paths):
        raise ValueError(f"{field}={paths!r} must name paths: a shard folder, list file (.txt) "
                         "or video, or a tuple of them.")
    if not paths:
        raise ValueError(f"{field} is empty: name shard folders, list files or videos.")
    for path in map(os.fspath, paths):
        if not os.path.exists(path):
            raise ValueError(f"{field}: {path} does not exist.")
        if os.path.isdir(path):
            if not (_shards_in(path) or formats.list_videos(path)):
                raise ValueError(f"{field}: folder {path} holds no .tfrecord shards, videos or "
                                 "folders of frames (two images or more).")
        elif path.endswith(".txt"):
            try:
                formats.read_list(path, on_missing="skip")
            except ValueError as error:
                raise ValueError(f"{field}: {error}") from error
        elif not (path.endswith(".tfrecord") or formats.is_video(path)):
            raise ValueError(f"{field}: {path} is not a shard, list file (.txt), video or "
                             "folder.")
    return list(map(os.fspath, paths))


def resolve_sources(paths, cache_dir, ingest_config, field="config.data.train", on_error="skip"):
    """Sorts `paths` into TFRecord shards and list-file entries, ingesting videos on first use.

    Folders hold shards or videos (a folder of frame images is one clip); `.tfrecord` files
    are shards; `.txt` files are reference list files; videos are ingested into `cache_dir`
    (once: ingestion skips finished videos; a relative one resolves as
    `cmp_tf.data.cache_dir` says).

    Returns:
        (shard paths, list entries).
    """
    paths = _once(check_sources(paths, field), field)
    cache_dir = data_lib.cache_dir(cache_dir)
    shards, entries, videos = [], [], []
    for path in paths:
        if os.path.isdir(path):
            found = _shards_in(path)
            if found:
                shards += _check_shard_sizes(path, on_error, found, field) or found
                continue
            videos += formats.list_videos(path)
            if not videos:
                raise ValueError(f"{field}: folder {path} holds no .tfrecord shards or videos.")
        elif path.endswith(".tfrecord"):
            shards.append(path)
        elif path.endswith(".txt"):
            found, skipped = formats.read_list(path, on_missing=on_error)
            for line in skipped:
                tf.get_logger().warning(f"Skipping {line}.")
            entries += found
        else:
            videos.append(path)
    videos = _once(videos, field)
    sources = []
    if videos:
        rundir.check_folder_path(cache_dir, "config.data.cache_dir")  # named as the user sets it
        manifest = ingest_lib.ingest(videos, cache_dir, ingest_config)
        # Only this config's and this file version's shards: stale keys of the same video
        # stay in the cache and would otherwise be read twice over.
        current = {ingest_lib.source_key(v, ingest_config) for v in videos}
        sources = [s for s in manifest["sources"] if s["key"] in current]
        for source in sources:
            shards += [os.path.join(cache_dir, s) for s in source["shards"]]
        if any(s["error"] or s.get("warnings") or any(s["dropped"].values())
               for s in sources):
            tf.get_logger().warning(f"{field}: {shards_lib.summarize(sources)}")
    shards = _once(shards, field)  # a video's shards may be named too, or its cache folder
    if not shards and not entries:
        why = shards_lib.summarize(sources) if sources else "videos too static or unreadable?"
        raise ValueError(f"{field}: no training pairs in {list(paths)} ({why} See "
                         f"{os.path.join(cache_dir, shards_lib.MANIFEST)}.)")
    return shards, entries


def _once(paths, field):
    """`paths` with each file or folder kept once, by real path (`clips` and `clips/`, a shard
    named beside its folder, a link): one named twice would be read twice over, weighing its
    pairs double. The repeats are named in a warning."""
    kept, seen = [], {}
    for path in paths:
        real = os.path.realpath(path)
        if real in seen:
            again = "named again" if path == seen[real] else f"{seen[real]} again"
            tf.get_logger().warning(f"{field}: {path} is {again}; read once.")
            continue
        seen[real] = path
        kept.append(path)
    return kept


def resolve_data(config):
    """Resolves the recipe's training and validation sources as the input pipeline will,
    ingesting their videos into the cache: a source that gives no pairs is refused, naming its
    field, before a run folder is touched.

    Returns:
        {split: (shard paths, list entries)} for "train" and, if the recipe has one, "val".
    """
    on_error = check_data_config(config)[0]
    ingest_config = config.get("ingest") or {}
    if hasattr(ingest_config, "to_dict"):
        ingest_config = ingest_config.to_dict()
    splits = ("train", "val") if config.data.val else ("train",)
    for split in splits:  # both fail fast before either's videos are ingested
        check_sources(config.data[split], f"config.data.{split}")
    return {split: resolve_sources(config.data[split], config.data.cache_dir, ingest_config,
                                   f"config.data.{split}", on_error) for split in splits}


def _videos_in(paths):
    """The video files among `paths` that training would ingest (folders without shards)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    videos = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path) and not _shards_in(path):
            videos += formats.list_videos(path)
        elif os.path.isfile(path) and formats.is_video(path):
            videos.append(path)
    return videos


def source_videos(paths):
    """Real paths of the videos `paths` hold or were ingested from: video files, the videos in
    folders, and the videos a shard folder's sidecars record (list files name frames)."""
    found = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            found += formats.list_videos(path)
            found += [record["video"] for record in shards_lib.read_sidecars(path)[0]]
        elif formats.is_video(path):
            found.append(path)
    return {os.path.realpath(p) for p in found}


def videos_in_both(config):
    """The validation videos the training data also holds (config.data.train and .val, by
    real path): its score on them is not one on footage it never saw."""
    return sorted(source_videos(config.data.train or ()) & source_videos(config.data.val or ()))


def ingestion_summary(config):
    """One line on what ingestion made of the recipe's videos (data.train and data.val): pairs,
    files that failed and why, dropped pairs by reason; None if it names no videos.

    Read from the sidecars in data.cache_dir; ingests nothing.
    """
    ingest_config = config.get("ingest") or {}
    if hasattr(ingest_config, "to_dict"):
        ingest_config = ingest_config.to_dict()
    videos = sorted(set(_videos_in(config.data.train) + _videos_in(config.data.val or ())))
    if not videos:
        return None
    current = {ingest_lib.source_key(v, ingest_config) for v in videos}
    sources = [s for s in shards_lib.read_sidecars(data_lib.cache_dir(config.data.cache_dir))[0]
               if s["key"] in current]
    if not sources:
        return f"Ingestion: none of the {len(videos)} videos is ingested yet."
    missing = len(videos) - len(sources)
    note = f" {missing} of {len(videos)} videos are not ingested yet." if missing else ""
    return shards_lib.summarize(sources) + note


def _load_entry(entries):
    """Loads list entry i in Python: (image, flow, valid, why) with `why` empty when it loaded,
    else the line and the reason (and placeholder arrays): `_count_unreadable` decides whether
    that stops the stream (raised inside, it would end it with TensorFlow's traceback around
    the reason, and no checkpoint)."""

    def load(index):
        entry = entries[int(index)]
        try:
            image, _, flow, valid = formats.read_pair(entry)
            valid = valid * formats.kitti_codable(flow)  # as it would be, ingested into shards
            flow = formats.fill_unknown_flow(flow, valid)
        except ValueError as e:
            why = f"{entry.source}: {e}"
            return (np.zeros((1, 1, 3), np.uint8), np.zeros((1, 1, 2), np.float32),
                    np.zeros((1, 1), np.float32), why.encode())
        return image, flow, valid, b""

    def fn(index):
        image, flow, valid, why = tf.numpy_function(
            load, [index], [tf.uint8, tf.float32, tf.float32, tf.string])
        return (tf.ensure_shape(image, [None, None, 3]), tf.ensure_shape(flow, [None, None, 2]),
                tf.ensure_shape(valid, [None, None]), tf.ensure_shape(why, []))

    return fn


def _placeholder(why):
    """What an unreadable sample decodes to until it is counted and dropped."""
    return (tf.zeros([1, 1, 3], tf.uint8), tf.zeros([1, 1, 2]), tf.zeros([1, 1]), why)


def _count_unreadable(limit, field, on_error):
    """(initial state, step) of a scan over loaded samples: logs each unreadable one and names
    the failure that must stop the stream: `limit` in a row, the first with on_error="raise",
    or, at the end of a finite stream, that none was readable.

    The scan never fails itself: it passes the failure on with the sample and flags every later
    sample, so `_stop_at_failure` ends the stream there and raises it downstream. Failing inside
    the scan left the loaders upstream drawing samples for ever after, and a `tf.numpy_function`
    loader in flight when the iterator is deleted (holding the GIL) hangs the process at exit.

    State: (unreadable in a row, unreadable, seen, the last reason, failed before).
    """

    def when(condition, make_op):
        def run():
            with tf.control_dependencies([make_op()]):
                return tf.constant(True)

        return tf.cond(condition, run, lambda: tf.constant(False))

    def step(state, element):
        row, bad, seen, last, failed = state
        index, image, flow, valid, why, entry = element
        end = tf.equal(entry, _END)
        unreadable = (tf.strings.length(why) > 0) & ~end
        row = tf.where(unreadable, row + 1, tf.zeros_like(row))
        bad, seen = bad + tf.cast(unreadable, tf.int64), seen + tf.cast(~end, tf.int64)
        last = tf.where(unreadable, why, last)
        failures = [  # (condition, message), the first that holds named
            (row >= limit, _text(field, ": ", row, " samples in a row could not be read (", bad,
                                 " of ", seen, " so far); the last: ", last,
                                 " Fix or remove that source.")),
            (end & (seen == bad), _text(field, ": none of its ", seen,
                                        " samples could be read; the last: ", last)),
        ]
        if on_error == "raise":
            failures.insert(0, (unreadable, _text(field, ": ", why, " With data.on_error=raise "
                                                  "the first unreadable sample stops it.")))
        failure = tf.constant("")
        for condition, message in reversed(failures):
            failure = tf.where(condition, message, failure)

        def note():  # ops made inside the branch: made outside, they would run every time
            return tf.print(_text("WARNING: skipping an unreadable sample of ", field, " (", bad,
                                  " of ", seen, " so far): ", why), output_stream=sys.stderr)

        checks = [] if on_error == "raise" else [when(unreadable & ~failed, note)]
        with tf.control_dependencies(checks):
            keep = tf.identity(~unreadable & ~end)
        state = (row, bad, seen, last, failed | (tf.strings.length(failure) > 0))
        return state, (index, image, flow, valid, keep, failure, failed)

    zero = tf.constant(0, tf.int64)
    return (zero, zero, zero, tf.constant(""), tf.constant(False)), step


def _stop_at_failure(ds):
    """Ends `_count_unreadable`'s stream after its first failure and raises that failure:
    (index, image, flow, valid, keep, failure, failed before) -> the kept (index, image, flow,
    valid). Ending the stream stops the loaders upstream before the error reaches the caller."""
    ds = ds.take_while(lambda index, image, flow, valid, keep, failure, failed: ~failed)
    ds = ds.filter(lambda index, image, flow, valid, keep, failure, failed:
                   keep | (tf.strings.length(failure) > 0))

    def raise_failure(index, image, flow, valid, keep, failure, failed):
        check = tf.debugging.Assert(tf.equal(tf.strings.length(failure), 0), [failure])
        with tf.control_dependencies([check]):
            return tf.identity(index), image, flow, valid

    return ds.map(raise_failure)


def resize_short_side(image, flow, valid, short_size):
    """Resizes so the short side is `short_size` (image bicubic, flow bilinear and scaled)."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    ratio = short_size / tf.reduce_min(shape)
    size = tf.cast(tf.round(shape * ratio), tf.int32)
    image = tf.clip_by_value(tf.image.resize(tf.cast(image, tf.float32), size, "bicubic"), 0, 255)
    scale = tf.cast(size, tf.float32)[::-1] / shape[::-1]  # (x, y) scale of the flow vectors
    flow = tf.image.resize(flow, size, "bilinear") * scale
    valid = tf.image.resize(valid[..., None], size, "nearest")[..., 0]
    return image, flow, valid


def crop(image, flow, valid, crop_size, seed=None):
    """Random crop (with a stateless `seed`) or centre crop (seed None); pads small inputs."""
    height, width = crop_size
    stack = tf.concat([image, flow, valid[..., None]], -1)  # crop all six channels together
    shape = tf.shape(stack)
    pad_h, pad_w = tf.maximum(height - shape[0], 0), tf.maximum(width - shape[1], 0)
    stack = tf.pad(stack, [[pad_h // 2, pad_h - pad_h // 2], [pad_w // 2, pad_w - pad_w // 2],
                           [0, 0]])
    shape = tf.shape(stack)
    if seed is None:
        top, left = (shape[0] - height) // 2, (shape[1] - width) // 2
    else:
        top = draw(seed, "crop_top", 0, shape[0] - height + 1, tf.int32)
        left = draw(seed, "crop_left", 0, shape[1] - width + 1, tf.int32)
    stack = tf.ensure_shape(stack[top:top + height, left:left + width], [height, width, 6])
    return stack[..., :3], stack[..., 3:5], stack[..., 5]


def rotate(image, flow, valid, degrees):
    """Rotates the frame about its centre by `degrees` (counter-clockwise as seen on screen).

    The field is resampled and each vector turned by the same angle: a point moving by f moves
    by R f once both frames are rotated. (The reference's rotate used arctan instead of
    arctan2, which flips vectors pointing left.) Pixels rotated in from outside are invalid.
    """
    theta = -degrees * (3.141592653589793 / 180.0)  # y points down: screen-ccw is negative
    cos, sin = tf.cos(theta), tf.sin(theta)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    cy, cx = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    # Output pixel (x, y) samples the input at R^-1 ((x, y) - c) + c.
    transform = tf.stack([cos, sin, cx - cos * cx - sin * cy,
                          -sin, cos, cy + sin * cx - cos * cy, 0.0, 0.0])[None]
    stack = tf.concat([image, flow, valid[..., None]], -1)[None]
    size = tf.shape(image)[:2]
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=stack, transforms=transform, output_shape=size, fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT")[0]
    u, v = warped[..., 3], warped[..., 4]
    turned = tf.stack([cos * u - sin * v, sin * u + cos * v], -1)
    return warped[..., :3], turned, tf.cast(warped[..., 5] > 0.999, tf.float32)


def augment_motion(flow, seed, reverse=False, scale=(1.0, 1.0), rotate=False):
    """The reference's flow-only augmentations: the image stays, the motion changes.

    They make targets no appearance explains, so the network must follow the guidance (drawn
    afterwards from the augmented flow) rather than guess motion from the picture.
    `reverse`: negate with probability 1/2; `scale`: multiply by U(low, high) (the reference
    uses (0.5, 2)); `rotate`: with probability 1/2 turn every vector by U(0, 2 pi) (the
    reference's arctan(v / u) lost the sign of u; a rotation matrix has no such flaw).
    """
    if reverse:
        sign = tf.where(draw(seed, "flow_reverse") < 0.5, -1.0, 1.0)
        flow = flow * sign
    if tuple(scale) != (1.0, 1.0):
        flow = flow * draw(seed, "flow_scale", scale[0], scale[1])
    if rotate:
        theta = draw(seed, "flow_rotate_angle", 0.0, 2 * 3.141592653589793)
        theta = tf.where(draw(seed, "flow_rotate") < 0.5, theta, 0.0)
        cos, sin = tf.cos(theta), tf.sin(theta)
        flow = tf.stack([cos * flow[..., 0] - sin * flow[..., 1],
                         sin * flow[..., 0] + cos * flow[..., 1]], -1)
    return flow


def flip(image, flow, valid):
    """Horizontal mirror: x runs backwards, so the horizontal motion u changes sign."""
    return image[:, ::-1], flow[:, ::-1] * tf.constant([-1.0, 1.0]), valid[:, ::-1]


def _range(value, field, minimum=0.0):
    """A (low, high) pair of finite numbers with minimum < low <= high."""
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in value) and minimum < value[0] <= value[1]):
        raise ValueError(f"{field}={value!r} must be (low, high) with {minimum:g} < low <= high.")
    return float(value[0]), float(value[1])


def check_data_config(config):
    """Refuses the input pipeline's fields that would fail at its first sample, or silently
    mean something else, naming the field; train and evaluate call it before writing anything.

    Returns:
        (on_error, max_bad_in_a_row, layered fields) as the pipeline uses them.
    """
    data = config.data
    on_error = data.get("on_error", "skip")
    if on_error not in ("skip", "raise"):
        raise ValueError(f"config.data.on_error must be 'skip' or 'raise'; got {on_error!r}.")
    max_bad = data.get("max_bad_in_a_row", MAX_BAD_IN_A_ROW)
    if not sampling.is_int(max_bad) or max_bad < 1:
        raise ValueError(f"config.data.max_bad_in_a_row must be a positive integer; got "
                         f"{max_bad!r}.")
    _range(tuple(data.get("zoom", (1.0, 1.0))), "config.data.zoom")
    _range(tuple(data.get("flow_scale", (1.0, 1.0))), "config.data.flow_scale")
    degrees = data.get("rotate_degrees", 0.0)
    if isinstance(degrees, bool) or not isinstance(degrees, (int, float)) or not (
            math.isfinite(degrees) and 0 <= degrees <= 180):
        raise ValueError(f"config.data.rotate_degrees={degrees!r} must be an angle in [0, 180].")
    guidance = config.get("guidance")
    if guidance is not None:
        try:
            sampling.check_guidance_args(
                tuple(guidance.strategies) if isinstance(guidance.strategies, (list, tuple))
                else guidance.strategies, guidance.bg_ratio, guidance.nms_ks,
                guidance.max_num_guide, tuple(guidance.get("num_points", (0, 0))))
        except ValueError as error:
            raise ValueError(f"config.guidance.{error}") from error
    ingest_config = config.get("ingest") or {}
    ingest_lib.check_config(ingest_config.to_dict() if hasattr(ingest_config, "to_dict")
                            else ingest_config)
    return on_error, max_bad, layered_lib.check_layered_config(data.get("layered") or {})


class DataError(ValueError):
    """The input pipeline stopped at data it could not read; the message names the source
    (the config field or flag) and the last reason."""


class UndecodableRecord(DataError):
    """A record whose framing checks out but whose content does not decode: which shard holds
    it, the pipeline cannot say (`name_undecodable` finds it)."""


_FAILURE = re.compile(r"assertion failed: \[((?:config\.data\.\w+|--\w+): .*?)\]\s*\[\[", re.S)
# TensorFlow's words for any other error inside an input pipeline, and the node it was at.
_PIPELINE_ERROR = re.compile(r"transformation with iterator: [\w:]+: (.*?)\n\s*\[\["
                             r"(?:\{\{function_node [^}]*\}\})?\{\{node ([^}]*)")


def unreadable_data(error):
    """The DataError inside `error`, the TensorFlow error a dataset of `make_dataset` raises
    where it stops at unreadable data (see `_count_unreadable`), or where a shard's record
    does not decode (a record that TFRecord's checksums pass, so written so: a shard made by
    another tool); None for any other error."""
    text = str(getattr(error, "message", error))
    match = _FAILURE.search(text)
    if match:
        return DataError(match.group(1))
    match = _PIPELINE_ERROR.search(text)
    if match:
        return UndecodableRecord(f"A sample of the input could not be decoded ("
                                 f"{match.group(1).strip()} at {match.group(2)}): a shard not "
                                 "written by cmp_tf's ingestion? Remove it from the data, or "
                                 "ingest its videos again.")
    return None


_EAGER_NOISE = re.compile(r"\{\{[^}]*\}\}|\[Op:[^\]]*\]")  # an eager op's node and op names


def first_undecodable(shards):
    """(shard, record number from 1, TensorFlow's reason) of the first record of `shards`
    whose content does not decode, or None: read eagerly, one record at a time, to name what
    the input pipeline cannot (a decoding op that fails inside it names no file)."""
    for path in shards:
        records = iter(tf.data.TFRecordDataset(path))
        number = 0
        while True:
            try:
                record = next(records)
            except (StopIteration, tf.errors.DataLossError):  # a cut record: named elsewhere
                break
            number += 1
            try:
                records_lib.decode_example(record)
            except tf.errors.InvalidArgumentError as error:  # its words, not its op's names
                why = _EAGER_NOISE.sub("", (error.message or "no reason given").splitlines()[0])
                return path, number, why.strip()
    return None


def name_undecodable(failure, shards):
    """`failure` (from `unreadable_data`) naming the shard and record that do not decode, where
    it is such a failure and the record is found in `shards`."""
    found = first_undecodable(shards) if isinstance(failure, UndecodableRecord) else None
    if found is None:
        return failure
    path, number, why = found
    return DataError(f"{failure} It is {path}: its record {number} does not decode ({why}).")


def batches(dataset):
    """Iterates a dataset of `make_dataset`, raising where it stops at unreadable data the
    DataError that names the source instead of TensorFlow's error around it."""
    iterator = iter(dataset)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except tf.errors.InvalidArgumentError as error:
            failure = unreadable_data(error)
            if failure is None:
                raise
            raise failure from None
        yield batch


def make_dataset(config, split="train", input_context=None, start_step=0, guidance=True,
                 field=None):
    """The input pipeline of a recipe.

    Training augmentations, each a config switch. Of the frame (image and flow together):
    `data.flip` (mirror, u negated), `data.zoom` (low, high) factor on the short side,
    `data.rotate_degrees` (max angle). Of the motion only, as the reference: `data.flow_reverse`,
    `data.flow_scale` (low, high), `data.flow_rotate` (see `augment_motion`). And
    `data.layered.ratio` of the training samples become layered scenes with exact flow
    (`cmp_tf.data.layered`), textured from the frame they replace.

    Args:
        config: the recipe (uses data.*, guidance.*, ingest.*, seed).
        split: "train" (shuffled, repeated, random crop / flip) or "val" (one pass, centre
            crop, the same guidance every time).
        input_context: tf.distribute.InputContext: each input pipeline reads a disjoint part
            and batches per replica.
        start_step: training steps already done; their samples are skipped (resume).
        guidance: False leaves `sparse` all zero (no sampling): to measure what sampling costs.
        field: how errors name the sources (default config.data.<split>; a command's flag).

    Raises:
        ValueError naming the field for a bad config or source, before reading a sample; an
        unreadable sample (or too many) stops the stream with a TensorFlow error whose
        `unreadable_data` says which.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val'; got {split!r}.")
    data, train = config.data, split == "train"
    on_error, max_bad, layered = check_data_config(config)
    ingest_config = config.get("ingest") or {}
    if hasattr(ingest_config, "to_dict"):
        ingest_config = ingest_config.to_dict()
    field = field or f"config.data.{split}"
    shards, entries = resolve_sources(data.train if train else data.val, data.cache_dir,
                                      ingest_config, field, on_error)
    batch = data.batch_size
    if input_context is not None:
        batch = input_context.get_per_replica_batch_size(data.batch_size)

    # Handles: serialized records, or list-entry indices; decoded only after skipping.
    handles = []
    if shards:
        sizes = [os.path.getsize(p) for p in shards]
        files = tf.data.Dataset.from_tensor_slices(
            (shards, tf.constant(sizes, tf.int64), tf.constant(_expected_records(shards),
                                                               tf.int64)))
        if input_context is not None and len(shards) >= input_context.num_input_pipelines:
            files = files.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
            input_context_done = True
        else:
            input_context_done = False
        records = files.interleave(_read_shard, cycle_length=4,
                                   num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if input_context is not None and not input_context_done:
            records = records.shard(input_context.num_input_pipelines,
                                    input_context.input_pipeline_id)
        handles.append(records)
    if entries:
        indices = tf.data.Dataset.range(len(entries))
        if input_context is not None:
            indices = indices.shard(input_context.num_input_pipelines,
                                    input_context.input_pipeline_id)
        handles.append(indices.map(lambda i: (tf.constant(b""), i)))
    ds = handles[0] if len(handles) == 1 else handles[0].concatenate(handles[1])
    if not train:  # a marker closes the one pass, so a set with nothing readable fails there
        ds = ds.concatenate(tf.data.Dataset.from_tensors((tf.constant(b""),
                                                          tf.constant(_END, tf.int64))))
    if train:
        ds = ds.repeat().shuffle(data.shuffle_buffer, seed=config.seed,
                                 reshuffle_each_iteration=True)
    ds = ds.enumerate()
    if train and start_step:
        ds = ds.skip(start_step * batch)

    load_entry = _load_entry(entries) if entries else None
    strategies = config.guidance if guidance else None
    crop_size = tuple(data.crop)
    layered_ratio = float(layered.pop("ratio")) if train else 0.0

    def render_layered(image, element_seed):
        rng = np.random.default_rng([_LAYERED_STREAM, int(element_seed) % 2**63])
        return layered_lib.render_scene(rng, *crop_size, source=image, **layered)

    def maybe_layered(image, flow, valid, seed, element_seed):
        def scene():
            out = tf.numpy_function(render_layered, [image, element_seed],
                                    [tf.float32] * 3, stateful=False, name="layered_scene")
            for tensor, channels in zip(out, ([3], [2], [])):
                tensor.set_shape(list(crop_size) + channels)
            return tuple(out)

        use = draw(seed, "layered") < layered_ratio
        return tf.cond(use, scene, lambda: (image, flow, valid))

    def load(index, handle):
        """(index, image, flow, valid, why unreadable or "", entry kind)."""
        record, entry = handle

        def from_record():
            return (*records_lib.decode_example(record), tf.constant(""))

        branches = [(tf.equal(entry, _RECORD), from_record)] if shards else []
        if load_entry is not None:
            branches.append((entry >= 0, lambda: load_entry(entry)))
        # Broken shards say why in `record`; the end marker is dropped after counting.
        otherwise = lambda: _placeholder(tf.where(tf.equal(entry, _END), "", record))  # noqa: E731
        out = tf.case(branches, default=otherwise) if branches else otherwise()
        return (index, *out, entry)

    def decode(index, image, flow, valid):
        seed = tf.stack([tf.cast(config.seed, tf.int64), index])
        short_size = float(data.short_size)
        low, high = data.get("zoom", (1.0, 1.0))
        if train and (low, high) != (1.0, 1.0):  # random zoom: flow scales with the image
            short_size *= draw(seed, "zoom", low, high)
        image, flow, valid = resize_short_side(image, flow, valid, short_size)
        max_degrees = data.get("rotate_degrees", 0.0)
        if train and max_degrees:
            angle = draw(seed, "rotate_image", -max_degrees, max_degrees)
            image, flow, valid = rotate(image, flow, valid, angle)
        image, flow, valid = crop(image, flow, valid, crop_size, seed if train else None)
        if train and data.get("flip", False):
            image, flow, valid = tf.cond(
                draw(seed, "flip") < 0.5,
                lambda: flip(image, flow, valid), lambda: (image, flow, valid))
        if train:
            flow = augment_motion(flow, seed, data.get("flow_reverse", False),
                                  tuple(data.get("flow_scale", (1.0, 1.0))),
                                  data.get("flow_rotate", False))
        if layered_ratio > 0:
            image, flow, valid = maybe_layered(image, flow, valid, seed,
                                               config.seed * _SEED_STRIDE + index)
        if strategies is None:
            sparse = tf.zeros(crop_size + (3,))
        else:
            sparse = sampling.sample_guidance_tf(
                flow, config.seed * _SEED_STRIDE + index,
                strategies=tuple(strategies.strategies), bg_ratio=strategies.bg_ratio,
                nms_ks=strategies.nms_ks, max_num_guide=strategies.max_num_guide,
                num_points=tuple(strategies.get("num_points", (0, 0))))
            sparse = sparse * valid[..., None]  # none where the teacher flow failed its check
        return {"image": image, "sparse": sparse}, {"flow": flow, "valid": valid}

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = _stop_at_failure(ds.scan(*_count_unreadable(max_bad, field, on_error)))
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch, drop_remainder=train).prefetch(tf.data.AUTOTUNE)
