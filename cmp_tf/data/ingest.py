r"""Videos -> teacher flow -> sharded TFRecords of (frame t, frame t+gap, flow, valid mask).

  python -m cmp_tf.data.ingest --videos=clips/ --out=data/shards [--workers=2]
  python -m cmp_tf.data.ingest --lists=train.txt --out=data/shards  # the reference's lists
  python -m cmp_tf.data.ingest --videos=clips/ --out=gs://... --runner=DataflowRunner \
      --beam_options="--project=... --region=..."

One function, `ingest_video`, does all the work for one video; a local process pool or an
Apache Beam pipeline (any runner) maps it over the files, as TensorFlow Datasets builds large
datasets. Each video's shards are written under temporary names and renamed when the video is
done, then a `<key>.json` sidecar records the result: a second run skips finished videos, a
killed run redoes only unfinished ones (their leftovers are deleted first), so shards are never
duplicated. `manifest.json` gathers the sidecars: counts, dropped pairs and why, errors.

Storage: frames as JPEG (quality from the config; ~10x smaller than raw pixels, and its noise is
far below the teacher's flow error). Flow and its forward-backward validity mask as one 16-bit
PNG in KITTI's encoding: 1/64 px steps (max error 1/128 px, where the reference's 8-bit
images have a 0.39 px quantum) over +-512 px. Measured on a 640x272 DIS flow of the sample clip
`bikes`: 209 KB, against 696 KB for raw float16 at the same max error (652 KB zlib-compressed).
"""
import concurrent.futures
import glob
import hashlib
import importlib
import json
import os

import cv2
import numpy as np

from cmp_tf.data import formats

MANIFEST = "manifest.json"
DROP_REASONS = ("static", "scene_cut", "inconsistent", "bad_flow", "bad_file")


def default_ingest_config():
    """The `config.ingest` fields, with the defaults recipes use."""
    return dict(
        estimator="dis",  # "dis", or "package.module:function" taking (rgb1, rgb2) -> flow
        dis_preset="medium",  # ultrafast, fast or medium (OpenCV DISOpticalFlow presets)
        gaps=(1, 2),  # pairs (t, t + gap) for each gap
        frame_step=1,  # every frame_step-th frame starts pairs
        max_side=640,  # frames are resized so the longer side is at most this (-1: keep)
        min_motion=0.3,  # px: a pair whose mean flow magnitude is lower is dropped as static
        max_photometric=25.0,  # mean |frame t - warped frame t+gap| (0..255) above: scene cut
        min_consistent=0.4,  # fraction of pixels passing the forward-backward check below:
        # the teacher failed (occlusion, blur, cut)
        fb_alpha=0.01, fb_beta=0.5,  # forward-backward check (Sundaram et al., ECCV 2010)
        jpeg_quality=95,
        pairs_per_shard=256,
        on_error="skip",  # "skip": record a bad file in the manifest and go on; "raise": stop
    )


def make_estimator(name, dis_preset="medium"):
    """Teacher flow estimator: fn(rgb1 uint8, rgb2 uint8) -> flow [H, W, 2] float32 px."""
    if name == "dis":
        presets = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
                   "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                   "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
        if dis_preset not in presets:
            raise ValueError(f"config.ingest.dis_preset={dis_preset!r}; known: "
                             f"{', '.join(presets)}.")
        dis = cv2.DISOpticalFlow_create(presets[dis_preset])

        def estimate(rgb1, rgb2):
            gray1 = cv2.cvtColor(rgb1, cv2.COLOR_RGB2GRAY)
            gray2 = cv2.cvtColor(rgb2, cv2.COLOR_RGB2GRAY)
            return dis.calc(gray1, gray2, None)

        return estimate
    module, _, function = name.partition(":")
    if not function:
        raise ValueError(f"config.ingest.estimator={name!r}: use 'dis' or 'module:function'.")
    try:
        return getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"config.ingest.estimator={name!r} could not be loaded: {e}") from e


def _sample_at_flow(image, forward):
    """image sampled at x + forward(x) (OpenCV remap: fast in worker processes, no TF), and
    the mask of pixels whose source lies inside the frame."""
    h, w = forward.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    map_x, map_y = grid_x + forward[..., 0], grid_y + forward[..., 1]
    sampled = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
    return sampled, inside


def forward_backward_valid(forward, backward, alpha, beta):
    """1 where the backward flow, sampled at x + forward(x), undoes the forward flow.

    |f + b(x + f)|^2 < alpha (|f|^2 + |b(x + f)|^2) + beta (Sundaram et al., 2010); pixels
    whose target leaves the frame are invalid.
    """
    back, inside = _sample_at_flow(backward, forward)
    residual = np.sum(np.square(forward + back), -1)
    bound = alpha * (np.sum(np.square(forward), -1) + np.sum(np.square(back), -1)) + beta
    return ((residual < bound) & inside).astype(np.uint8)


def photometric_error(frame1, frame2, forward, valid):
    """Mean absolute RGB difference (0..255) between frame t and frame t+gap warped back,
    over valid pixels: a scene cut leaves it high whatever the flow."""
    warped, inside = _sample_at_flow(frame2, forward)
    weight = valid * inside
    diff = np.abs(warped.astype(np.float32) - frame1.astype(np.float32)).mean(-1)
    return float((diff * weight).sum() / max(weight.sum(), 1.0))


def _sidecar(out_dir, video, cfg):
    return os.path.join(out_dir, f"{source_key(video, cfg)}.json")


def source_key(video, cfg):
    """Shard-name key: the video's stem plus a hash of its path, size, mtime and the ingest
    config (missing fields take their defaults). A cache may hold several keys of one video
    (an edited file, another config): readers take only the current key's shards."""
    cfg = {**default_ingest_config(), **cfg}
    stat = os.stat(video)
    blob = json.dumps([os.path.abspath(video), stat.st_size, stat.st_mtime_ns, cfg],
                      sort_keys=True, default=list)
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in
                   os.path.splitext(os.path.basename(video))[0])
    return f"{stem}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


def _example(frame1, frame2, flow, valid, source, index, gap, quality):
    import tensorflow as tf  # here: worker processes of the pool import it on first use

    def jpeg(rgb):
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok
        return data.tobytes()

    feature = {
        "image1": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg(frame1)])),
        "image2": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg(frame2)])),
        "flow": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[formats.encode_kitti_png(flow, valid)])),
        "height": tf.train.Feature(int64_list=tf.train.Int64List(value=[flow.shape[0]])),
        "width": tf.train.Feature(int64_list=tf.train.Int64List(value=[flow.shape[1]])),
        "source": tf.train.Feature(bytes_list=tf.train.BytesList(value=[source.encode()])),
        "frame": tf.train.Feature(int64_list=tf.train.Int64List(value=[index])),
        "gap": tf.train.Feature(int64_list=tf.train.Int64List(value=[gap])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _write_json(path, data):
    tmp = f"{path}.{os.getpid()}.tmp"  # per process: concurrent writers never share it
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)  # atomic: a reader sees the old file or the new one, never half


class _ShardWriter:
    """Writes examples to `<key>-NNNN.tfrecord.tmp`; only `commit` gives them their real names,
    so a killed run never leaves a shard that looks finished."""

    def __init__(self, out_dir, key, per_shard):
        self.out_dir, self.key, self.per_shard = out_dir, key, per_shard
        self.paths, self.count, self._writer = [], 0, None
        for leftover in glob.glob(os.path.join(out_dir, f"{key}-*.tfrecord*")):
            os.remove(leftover)  # from a run killed before its sidecar was written

    def write(self, example):
        import tensorflow as tf  # here: the pool's worker processes import it on first use

        if self._writer is None:
            self.paths.append(os.path.join(self.out_dir, f"{self.key}-{len(self.paths):04d}"
                                                         ".tfrecord"))
            self._writer = tf.io.TFRecordWriter(f"{self.paths[-1]}.tmp")
        self._writer.write(example)
        self.count += 1
        if self.count % self.per_shard == 0:
            self._close()

    def _close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def commit(self):
        self._close()
        for path in self.paths:
            os.replace(f"{path}.tmp", path)
        return [os.path.basename(p) for p in self.paths]

    def abort(self):
        self._close()
        for path in self.paths:
            os.remove(f"{path}.tmp")


def _ingest_source(source, out_dir, cfg, produce, **fields):
    """Runs `produce(record, writer, cfg)` for one source file, once: the shared bookkeeping
    of videos and list files (sidecar, leftovers, errors, atomic shards).

    An exclusive lock per source makes concurrent runs safe (the workers of a multi-worker
    job ingesting into one cache, two ingest commands): the second waits, then finds the
    sidecar; without it, one would delete the other's unfinished shards as leftovers.
    """
    import fcntl

    os.makedirs(out_dir, exist_ok=True)
    sidecar = _sidecar(out_dir, source, cfg)
    with open(f"{sidecar[:-len('.json')]}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        return _ingest_locked(source, out_dir, cfg, produce, sidecar, fields)


def _ingest_locked(source, out_dir, cfg, produce, sidecar, fields):
    if os.path.exists(sidecar):
        with open(sidecar) as f:
            return {**json.load(f), "skipped": True}
    cfg = {**default_ingest_config(), **cfg}
    key = source_key(source, cfg)
    record = dict(video=os.path.abspath(source), key=key, shards=[], pairs=0,
                  dropped={r: 0 for r in DROP_REASONS}, error=None, warnings=[], **fields)
    writer = _ShardWriter(out_dir, key, cfg["pairs_per_shard"])
    try:
        produce(record, writer, cfg)
    except (ValueError, cv2.error) as e:
        writer.abort()
        if cfg["on_error"] == "raise":
            raise
        record["error"] = str(e)
    else:
        record["shards"] = writer.commit()
        record["pairs"] = writer.count
    _write_json(sidecar, record)
    return {**record, "skipped": False}


def ingest_video(video, out_dir, cfg):
    """Ingests one video into `out_dir`; returns its sidecar record (also written as JSON).

    Idempotent: a finished video (its sidecar exists) is not redone; an unfinished one has its
    leftovers removed and starts over. With cfg["on_error"] == "skip" a bad video yields a
    record with `error` set instead of raising.
    """

    def produce(record, writer, cfg):
        frames, expected = formats.read_video(video, cfg["max_side"])
        record.update(frames=len(frames), expected_frames=expected)
        if 0 < len(frames) < expected:
            record["warnings"].append(f"decoded {len(frames)} of {expected} frames: the file "
                                      "is truncated or a frame failed to decode")
        estimate = make_estimator(cfg["estimator"], cfg["dis_preset"])
        for t in range(0, len(frames), cfg["frame_step"]):
            for gap in cfg["gaps"]:
                if t + gap >= len(frames):
                    continue
                f1, f2 = frames[t], frames[t + gap]
                forward, backward = estimate(f1, f2), estimate(f2, f1)
                if not (np.isfinite(forward).all() and np.isfinite(backward).all()):
                    record["dropped"]["bad_flow"] += 1
                    continue
                valid = forward_backward_valid(forward, backward, cfg["fb_alpha"],
                                               cfg["fb_beta"])
                if np.linalg.norm(forward, axis=-1).mean() < cfg["min_motion"]:
                    record["dropped"]["static"] += 1
                    continue
                if valid.mean() < cfg["min_consistent"]:
                    record["dropped"]["inconsistent"] += 1
                    continue
                if photometric_error(f1, f2, forward, valid) > cfg["max_photometric"]:
                    record["dropped"]["scene_cut"] += 1
                    continue
                writer.write(_example(f1, f2, forward, valid, video, t, gap,
                                      cfg["jpeg_quality"]))

    return _ingest_source(video, out_dir, cfg, produce, frames=0, expected_frames=-1)


def convert_list(list_file, out_dir, cfg):
    """Converts a reference list file (`img1 img2 flow.flo` or `... flow_x.jpg flow_y.jpg`) to
    shards, with the same bookkeeping as videos. A pair that fails to load (missing file, sizes
    that differ, NaN flow) is counted as `bad_file` and left out, or raises with on_error=raise.
    """

    def produce(record, writer, cfg):
        entries, skipped = formats.read_list(list_file, on_missing=cfg["on_error"])
        record["dropped"]["bad_file"] += len(skipped)
        record["warnings"] += skipped
        for index, entry in enumerate(entries):
            try:
                image1, image2, flow, valid = formats.read_pair(entry)
            except ValueError as e:
                if cfg["on_error"] == "raise":
                    raise
                record["dropped"]["bad_file"] += 1
                record["warnings"].append(str(e))
                continue
            writer.write(_example(image1, image2, flow, valid.astype(np.uint8), entry.source,
                                  index, 0, cfg["jpeg_quality"]))

    return _ingest_source(list_file, out_dir, cfg, produce)


def write_manifest(out_dir, cfg):
    """Gathers every video sidecar in `out_dir` into manifest.json: totals, drops, errors."""
    records = []
    for path in sorted(glob.glob(os.path.join(out_dir, "*.json"))):
        if os.path.basename(path) != MANIFEST:
            with open(path) as f:
                records.append(json.load(f))
    totals = dict(videos=len(records), pairs=sum(r["pairs"] for r in records),
                  dropped={k: sum(r["dropped"].get(k, 0) for r in records)  # older sidecars
                           for k in DROP_REASONS},
                  errors=sum(bool(r["error"]) for r in records))
    manifest = dict(config={**default_ingest_config(), **cfg}, totals=totals,
                    sources=sorted(records, key=lambda r: r["video"]))
    _write_json(os.path.join(out_dir, MANIFEST), manifest)
    return manifest


def _jobs(paths):
    """(function, path) per source: list files (.txt) are converted, videos ingested."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    lists = [os.fspath(p) for p in paths if os.fspath(p).endswith(".txt")]
    videos = formats.list_videos([p for p in paths if not os.fspath(p).endswith(".txt")])
    return [(convert_list, p) for p in lists] + [(ingest_video, p) for p in videos]


def _check_config(cfg):
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(default_ingest_config()))
    if unknown:
        raise ValueError(f"config.ingest has unknown fields {unknown}; known: "
                         f"{sorted(default_ingest_config())}.")
    if cfg.get("on_error", "skip") not in ("skip", "raise"):
        raise ValueError(f"config.ingest.on_error must be 'skip' or 'raise'; got "
                         f"{cfg['on_error']!r}.")
    return cfg


def ingest(paths, out_dir, cfg=None, workers=1, progress=True):
    """Ingests videos (files or folders) and reference list files (.txt) into `out_dir` with a
    local process pool.

    Returns:
        The manifest of `out_dir` (dict); `sources[i]["shards"]` name each source's shards.
    """
    from tqdm import tqdm

    cfg = _check_config(cfg)
    jobs = _jobs(paths)
    if not jobs:
        raise ValueError(f"No video or list files found in {paths}.")
    os.makedirs(out_dir, exist_ok=True)
    pairs = 0
    bar = tqdm(total=len(jobs), desc="ingest", unit="file", disable=not progress)
    if workers <= 1:
        done = (fn(path, out_dir, cfg) for fn, path in jobs)
        for record in done:
            pairs += record["pairs"]
            bar.update()
            bar.set_postfix(pairs=pairs)
    else:
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            futures = [pool.submit(fn, path, out_dir, cfg) for fn, path in jobs]
            for future in concurrent.futures.as_completed(futures):
                pairs += future.result()["pairs"]
                bar.update()
                bar.set_postfix(pairs=pairs)
    bar.close()
    return write_manifest(out_dir, cfg)


def ingest_beam(paths, out_dir, cfg=None, pipeline_args=()):
    """The same work as `ingest`, as an Apache Beam pipeline (DirectRunner, Dataflow, Flink...).

    Each element is one source file; workers write shards directly to `out_dir` (a path every
    worker reaches) and the manifest is gathered from the sidecars afterwards.
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    cfg = _check_config(cfg)
    jobs = _jobs(paths)
    os.makedirs(out_dir, exist_ok=True)
    with beam.Pipeline(options=PipelineOptions(list(pipeline_args))) as pipeline:
        _ = (pipeline | "sources" >> beam.Create(jobs)
             | "ingest" >> beam.MapTuple(lambda fn, path: fn(path, out_dir, cfg)))
    return write_manifest(out_dir, cfg)


def main(argv):
    from absl import app
    from absl import flags
    from ml_collections import config_flags  # noqa: F401  (registers --config)

    del argv
    flag = flags.FLAGS
    cfg = flag.config.get("ingest", {}) if flag.config is not None else {}
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    sources = (flag.videos or []) + (flag.lists or [])
    if not sources:
        raise app.UsageError("Name --videos and/or --lists.")
    if flag.runner == "local":
        manifest = ingest(sources, flag.out, cfg, workers=flag.workers)
    else:
        manifest = ingest_beam(sources, flag.out, cfg,
                               [f"--runner={flag.runner}", *flag.beam_options.split()])
    totals = manifest["totals"]
    print(f"{totals['pairs']} pairs from {totals['videos']} files in {flag.out}; dropped "
          f"{totals['dropped']}; {totals['errors']} files failed (see {MANIFEST}).")
    return 1 if totals["errors"] and not totals["pairs"] else 0


def _define_flags():
    from absl import flags
    from ml_collections import config_flags

    flags.DEFINE_list("videos", None, "Video files or folders of videos.")
    flags.DEFINE_list("lists", None, "Reference list files (img1 img2 flow...) to convert.")
    flags.DEFINE_string("out", None, "Output folder for shards and manifest.", required=True)
    config_flags.DEFINE_config_file("config", "configs/default.py",
                                    "Recipe whose `ingest` section is used.", lock_config=True)
    flags.DEFINE_integer("workers", os.cpu_count() or 1, "Local processes.")
    flags.DEFINE_string("runner", "local", "'local' (process pool) or a Beam runner name.")
    flags.DEFINE_string("beam_options", "", "Extra Beam pipeline options, space-separated.")


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
