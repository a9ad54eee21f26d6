r"""Videos -> teacher flow -> sharded TFRecords of (frame t, frame t+gap, flow, valid mask).

  python -m cmp_tf.data.ingest --videos=clips/ --out=data/shards [--workers=2]
  python -m cmp_tf.data.ingest --lists=train.txt --out=data/shards  # the reference's lists
  python -m cmp_tf.data.ingest --videos=clips/ --out=gs://... --runner=DataflowRunner \
      --beam_options="--project=... --region=..."

One function, `ingest_video`, does all the work for one video (teacher flow and its checks:
`teacher`; the example schema: `records`); a local process pool or an Apache Beam pipeline (any
runner) maps it over the files, as TensorFlow Datasets builds large datasets. `shards` keeps the
folder safe to resume and to share: atomic shards, a sidecar per source, locks, the manifest.

Storage: frames as JPEG (quality from the config; ~10x smaller than raw pixels, and its noise is
far below the teacher's flow error). Flow and its forward-backward validity mask as one 16-bit
PNG in KITTI's encoding: 1/64 px steps (max error 1/128 px, where the reference's 8-bit
images have a 0.39 px quantum) over +-512 px. Measured on a 640x272 DIS flow of the sample clip
`bikes`: 209 KB, against 696 KB for raw float16 at the same max error (652 KB zlib-compressed).
"""
import concurrent.futures
import hashlib
import json
import math
import multiprocessing
import multiprocessing.managers
import os
import signal
import sys
import threading

import cv2

from cmp_tf import rundir
from cmp_tf.data import formats
from cmp_tf.data import records
from cmp_tf.data import sampling
from cmp_tf.data import shards
from cmp_tf.data import teacher


DEFAULT_RECIPE = "configs/default.py"  # the command's --config where there is no other


def default_ingest_config():
    """The `config.ingest` fields, with the defaults recipes use."""
    return dict(
        estimator="dis",  # "dis", an OpenCV estimator (teacher.OPENCV_ESTIMATORS: deepflow,
        # tvl1, ...), or "package.module:function" taking (rgb1, rgb2) -> flow
        dis_preset="medium",  # ultrafast, fast, medium (OpenCV DISOpticalFlow presets) or fine
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


# What a list file's shards hold, in the key of its shards: a list converted by an earlier
# version is converted again, not reused (2: unknown flow filled as a list read directly is).
LIST_FORMAT = 2


def source_key(video, cfg):
    """Shard-name key: the video's stem plus a hash of its path, size, mtime and the ingest
    config (missing fields take their defaults). A cache may hold several keys of one video
    (another config): readers take only the current key's shards. The keys of a file's
    earlier versions are removed when its current version is ingested (`shards.ingest_once`)."""
    cfg = {**default_ingest_config(), **cfg}
    blob = json.dumps([os.path.abspath(video), *_file_version(video), cfg], sort_keys=True,
                      default=list)  # abspath normalizes a trailing slash
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in
                   os.path.splitext(os.path.basename(os.path.normpath(video)))[0])
    return f"{stem}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


def _file_version(path):
    """[size, mtime in ns]: what tells an edited file from the one ingested before (a list
    file's adds LIST_FORMAT, what its shards hold); for a folder of frames, its frame count
    and a digest of each frame's name, size and mtime (a frame added, removed, edited or
    renamed)."""
    if os.path.isdir(path):
        stats = [(os.path.basename(f), s.st_size, s.st_mtime_ns)
                 for f, s in ((f, os.stat(f)) for f in formats.frame_files(path))]
        return [len(stats), hashlib.sha1(json.dumps(stats).encode()).hexdigest()[:16]]
    stat = os.stat(path)
    form = [LIST_FORMAT] if os.fspath(path).endswith(".txt") else []  # videos' as before
    return [stat.st_size, stat.st_mtime_ns, *form]


def _config_digest(cfg):
    return hashlib.sha1(json.dumps(cfg, sort_keys=True, default=list).encode()).hexdigest()[:10]


def _ingest_source(source, out_dir, cfg, produce, **fields):
    cfg = {**default_ingest_config(), **cfg}
    return shards.ingest_once(source, out_dir, source_key(source, cfg), cfg, produce,
                              dict(fields, file_version=_file_version(source),
                                   config_digest=_config_digest(cfg)))


def ingest_video(video, out_dir, cfg, on_frame=None):
    """Ingests one video into `out_dir`; returns its sidecar record (also written as JSON).

    Idempotent: a finished video (its sidecar exists) is not redone; an unfinished one has its
    leftovers removed and starts over. With cfg["on_error"] == "skip" a bad video yields a
    record with `error` set instead of raising. Frames are decoded one at a time and only the
    max(gaps) + 1 latest are held, so a clip of any length fits in memory. `on_frame()`, if
    given, is called once per decoded frame (progress).
    """

    def produce(record, writer, cfg):
        stream, expected = formats.stream_video(video, cfg["max_side"])
        estimate = teacher.make_estimator(cfg["estimator"], cfg["dis_preset"])
        span = max(cfg["gaps"])
        window = {}  # frame index -> frame, for the pairs not yet made

        def pairs_from(start, count):
            """Writes the pairs starting at frame `start` (frames up to `count` - 1 decoded)."""
            if start % cfg["frame_step"] == 0:
                for gap in cfg["gaps"]:
                    if start + gap >= count:
                        continue
                    f1, f2 = window[start], window[start + gap]
                    try:
                        forward, backward = estimate(f1, f2), estimate(f2, f1)
                    except cv2.error as e:  # a ValueError naming the file and frames: with
                        # on_error=raise, OpenCV's own error was a traceback naming neither
                        raise ValueError(f"{video}: the teacher failed on frames {start} and "
                                         f"{start + gap}: {str(e).strip()}") from e
                    valid, reason = teacher.check_pair(f1, f2, forward, backward, cfg)
                    if reason:
                        record["dropped"][reason] += 1
                        continue
                    writer.write(records.encode_example(f1, f2, forward, valid, video, start,
                                                        gap, cfg["jpeg_quality"]))
            del window[start]  # later pairs start after it

        count = 0
        for index, frame in enumerate(stream):
            window[index] = frame
            count = index + 1
            if on_frame is not None:
                on_frame()
            if index >= span:  # every frame a pair from index - span needs has arrived
                pairs_from(index - span, count)
        formats.check_frame_count(video, count)
        for start in range(max(count - span, 0), count):
            pairs_from(start, count)
        record.update(frames=count, expected_frames=expected)
        if 0 < count < expected:
            record["warnings"].append(f"decoded {count} of {expected} frames: the file "
                                      "is truncated or a frame failed to decode")
        beyond = [gap for gap in cfg["gaps"] if gap >= count]
        if beyond:  # else a clip shorter than the gap gave no pair and no reason
            record["warnings"].append(
                f"gap{'s' if len(beyond) > 1 else ''} {', '.join(map(str, beyond))} made no "
                f"pair: the clip has {count} frames")

    return _ingest_source(video, out_dir, cfg, produce, frames=0, expected_frames=-1)


def convert_list(list_file, out_dir, cfg, on_frame=None):
    """Converts a reference list file (`img1 img2 flow.flo` or `... flow_x.jpg flow_y.jpg`) to
    shards, with the same bookkeeping as videos. A pair that fails to load (missing file, sizes
    that differ, NaN flow) is counted as `bad_file` and left out, or raises with on_error=raise.
    `on_frame()`, if given, is called once per listed pair (progress).
    """

    def produce(record, writer, cfg):
        entries, skipped = formats.read_list(list_file, on_missing=cfg["on_error"])
        record["dropped"]["bad_file"] += len(skipped)
        record["warnings"] += skipped
        for index, entry in enumerate(entries):
            if on_frame is not None:
                on_frame()
            try:
                image1, image2, flow, valid = formats.read_pair(entry)
            except ValueError as e:
                if cfg["on_error"] == "raise":
                    raise
                record["dropped"]["bad_file"] += 1
                why = str(e)  # with its line of the list, as the training pipeline names it
                record["warnings"].append(why if why.startswith(entry.source) else
                                          f"{entry.source}: {why}")
                continue
            # Unknown flow (0 in .flo / KITTI files, or beyond the shards' +-512 px) filled as
            # the pipeline fills a list read directly: stored as 0, a resize blended it in.
            valid = valid * formats.kitti_codable(flow)
            flow = formats.fill_unknown_flow(flow, valid)
            writer.write(records.encode_example(image1, image2, flow, valid, entry.source,
                                                index, 0, cfg["jpeg_quality"]))

    return _ingest_source(list_file, out_dir, cfg, produce)


def write_manifest(out_dir, cfg):
    """Gathers every sidecar in `out_dir` into manifest.json: totals, drops, errors."""
    return shards.gather(out_dir, {**default_ingest_config(), **(cfg or {})})


def _jobs(paths):
    """(function, path) per source: list files (.txt) are converted, videos ingested."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    lists = [os.fspath(p) for p in paths if os.fspath(p).endswith(".txt")]
    videos = formats.list_videos([p for p in paths if not os.fspath(p).endswith(".txt")])
    return [(convert_list, p) for p in lists] + [(ingest_video, p) for p in videos]


def check_config(cfg):
    """Refuses `config.ingest` fields that would fail on every file or silently make wrong
    pairs, naming the field, before any file is read; returns the fields given as a dict."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(default_ingest_config()))
    if unknown:
        raise ValueError(f"config.ingest has unknown fields {unknown}; known: "
                         f"{sorted(default_ingest_config())}.")
    if cfg.get("on_error", "skip") not in ("skip", "raise"):
        raise ValueError(f"config.ingest.on_error must be 'skip' or 'raise'; got "
                         f"{cfg['on_error']!r}.")
    fields = {**default_ingest_config(), **cfg}

    def whole(name, minimum, maximum=None):
        value = fields[name]
        if not sampling.is_int(value) or value < minimum or (maximum is not None
                                                               and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
            raise ValueError(f"config.ingest.{name}={value!r} must be a whole number {bound}.")

    def real(name, minimum, maximum=math.inf):
        value = fields[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                minimum <= value <= maximum):
            raise ValueError(f"config.ingest.{name}={value!r} must be a number in "
                             f"[{minimum:g}, {maximum:g}].")

    gaps = fields["gaps"]
    if not (isinstance(gaps, (list, tuple)) and gaps and all(
            sampling.is_int(gap) and gap >= 1 for gap in gaps)):
        raise ValueError(f"config.ingest.gaps={gaps!r} must be frame gaps, whole numbers >= 1 "
                         "(pairs (t, t + gap)).")
    whole("frame_step", 1)
    whole("pairs_per_shard", 1)
    whole("jpeg_quality", 0, 100)
    if fields["max_side"] != -1:
        whole("max_side", 1)
    real("min_motion", 0)
    real("max_photometric", 0)
    real("min_consistent", 0, 1)
    real("fb_alpha", 0)
    real("fb_beta", 0)
    # The teacher is built per file; a bad name is the config's fault, refused before any file
    # (not recorded as every file failing, in a manifest a corrected rerun would keep).
    defaults = default_ingest_config()
    teacher.make_estimator(cfg.get("estimator", defaults["estimator"]),
                           cfg.get("dis_preset", defaults["dis_preset"]))
    return cfg


def _check_out(paths, out, cfg):
    """Refuses an --out holding a source that `paths` names (files or folders) ingested under
    another config than `cfg`: a shard folder is read for training whole, so it would feed that
    source once per config. (A cache keeps configs apart by key and is not read whole.)"""
    digest = _config_digest({**default_ingest_config(), **check_config(cfg)})
    sources = {os.path.abspath(path) for _, path in _jobs(paths)}
    others = [record for record in shards.read_sidecars(out)[0] if record["video"] in sources
              and record.get("config_digest") not in (None, digest)]
    if others:
        names = ", ".join(f"{record['key']}.json" for record in others[:3])
        raise ValueError(
            f"--out={out} holds {others[0]['video']}"
            f"{f' and {len(others) - 1} more of these sources' if len(others) > 1 else ''} "
            f"ingested under another ingest config ({names}{', ...' if len(others) > 3 else ''}"
            "): training reads a shard folder whole and would feed both. Ingest this config "
            "into another --out, or delete those sidecars and the shards they list first.")


def _work_size(fn, path):
    """Frames a job decodes (a list file: its pairs); -1 when the container does not say."""
    if fn is convert_list:
        try:  # the job itself names what is wrong with an unreadable file
            with open(path, errors="replace") as f:
                return sum(1 for line in f if line.strip() and not line.lstrip().startswith("#"))
        except OSError:
            return -1
    return formats.video_frame_count(path)


def _run_job(fn, path, out_dir, cfg, index, frames):
    """One job in a pool worker, reporting each frame as its index on the `frames` queue."""
    return fn(path, out_dir, cfg, on_frame=lambda: frames.put(index))


def ingest(paths, out_dir, cfg=None, workers=1, progress=True):
    """Ingests videos (files or folders) and reference list files (.txt) into `out_dir` with a
    local process pool.

    Returns:
        The manifest of `out_dir` (dict); `sources[i]["shards"]` name each source's shards.
    """
    from cmp_tf import progress as progress_lib

    cfg = check_config(cfg)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a whole number >= 1; got {workers!r}.")
    rundir.check_folder_path(out_dir, "out_dir")
    jobs = _jobs(paths)
    if not jobs:
        raise ValueError(f"No video or list files found in {paths}.")
    os.makedirs(out_dir, exist_ok=True)
    # The bar counts frames (a list file's pairs), so one long video shows its progress too.
    sizes = [_work_size(fn, path) for fn, path in jobs]
    bar = progress_lib.bar(total=sum(sizes) if min(sizes) >= 0 else None, desc="ingest",
                           unit="frame", disable=not progress)
    reported, pairs, files = [0] * len(jobs), 0, 0

    def advance(index):
        reported[index] += 1
        bar.update()

    def finish(index, record):
        nonlocal pairs, files
        pairs, files = pairs + record["pairs"], files + 1
        bar.update(max(sizes[index] - reported[index], 0))  # a skipped or truncated file
        bar.set_postfix(pairs=pairs, files=f"{files}/{len(jobs)}")

    try:
        if workers <= 1:
            for index, (fn, path) in enumerate(jobs):
                finish(index, fn(path, out_dir, cfg, on_frame=lambda i=index: advance(i)))
        else:
            _in_pool(jobs, out_dir, cfg, workers, advance, finish)
    finally:
        bar.close()  # an error's message is not written onto the bar's line
    return write_manifest(out_dir, cfg)


def _ignore_interrupt():
    """A pool process leaves Ctrl-C to the parent, which stops it (no traceback per worker),
    and ends at SIGTERM, which is how the parent stops it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _interrupt(signum, frame):
    """SIGTERM (`kill`, a job scheduler's stop) taken as Ctrl-C, so the pool is stopped too:
    by default the parent died alone and its workers ran on to the ends of their files."""
    del frame
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _in_pool(jobs, out_dir, cfg, workers, advance, finish):
    """Runs `jobs` on `workers` processes. An error (on_error="raise"), Ctrl-C or SIGTERM stops
    them at once, the queued jobs cancelled and the running ones ended: their unfinished shards
    are leftovers the next run removes, as after a kill."""
    main_thread = threading.current_thread() is threading.main_thread()  # where signals go
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    manager = multiprocessing.managers.SyncManager()
    manager.start(_ignore_interrupt)
    pool = concurrent.futures.ProcessPoolExecutor(workers, initializer=_ignore_interrupt)
    try:
        frames = manager.Queue()
        futures = {pool.submit(_run_job, fn, path, out_dir, cfg, index, frames): index
                   for index, (fn, path) in enumerate(jobs)}
        pending = set(futures)
        while pending:
            done, pending = concurrent.futures.wait(pending, timeout=0.2)
            while not frames.empty():
                advance(frames.get())
            for future in done:
                finish(futures[future], future.result())
    except BaseException:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()  # a running job: its shards stay .tmp leftovers
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    else:
        pool.shutdown()
    finally:
        manager.shutdown()
        if main_thread:  # None: a handler set outside Python, as good as the default
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def ingest_beam(paths, out_dir, cfg=None, pipeline_args=()):
    """The same work as `ingest`, as an Apache Beam pipeline (DirectRunner, Dataflow, Flink...).

    Each element is one source file; workers write shards directly to `out_dir` (a path every
    worker reaches) and the manifest is gathered from the sidecars afterwards.
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    cfg = check_config(cfg)
    rundir.check_folder_path(out_dir, "out_dir")
    jobs = _jobs(paths)
    if not jobs:
        raise ValueError(f"No video or list files found in {paths}.")
    pipeline = beam.Pipeline(options=PipelineOptions(list(pipeline_args)))  # checks the runner
    os.makedirs(out_dir, exist_ok=True)
    with pipeline:
        _ = (pipeline | "sources" >> beam.Create(jobs)
             | "ingest" >> beam.MapTuple(lambda fn, path: fn(path, out_dir, cfg)))
    return write_manifest(out_dir, cfg)


def main(argv):
    from absl import app
    from absl import flags

    from cmp_tf import cli

    del argv
    flag = flags.FLAGS
    # No --config and no configs/ (an installed package): the default recipe's fields, as the
    # shipped model's config.json holds them
    config = cli.config_of(flag["config"]) if flag.config is not None \
        else rundir.read_config(rundir.PRETRAINED)[0]
    cfg = config.get("ingest", {})
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    sources = (flag.videos or []) + (flag.lists or [])
    if not sources:
        raise app.UsageError("Name --videos and/or --lists.")
    if flag.workers < 1:
        raise app.UsageError(f"--workers={flag.workers}: must be at least 1.")
    rundir.check_folder_path(flag.out, "--out")
    # which is which goes by the name (_jobs): a list under --videos, or a video or an image
    # under --lists, would be read as the other
    for path in flag.lists or []:
        if not path.endswith(".txt"):
            raise app.UsageError(f"--lists={path}: list files are .txt files naming one pair "
                                 "per line; name videos and folders of them with --videos.")
    for path in flag.videos or []:
        if path.endswith(".txt"):
            raise app.UsageError(f"--videos={path}: a .txt file is a list file; name it with "
                                 "--lists.")
    missing = [path for path in sources if not os.path.exists(path)]
    if missing:
        raise app.UsageError(f"--videos/--lists: {', '.join(missing)} does not exist.")
    try:
        _check_out(sources, flag.out, cfg)
        if flag.runner == "local":
            manifest = ingest(sources, flag.out, cfg, workers=flag.workers)
        else:
            manifest = ingest_beam(sources, flag.out, cfg,
                                   [f"--runner={flag.runner}", *flag.beam_options.split()])
    except ValueError as error:  # the config, the sources or the runner: refused, one line
        raise app.UsageError(str(error)) from error
    except KeyboardInterrupt:
        print(f"Interrupted. Finished files are kept in {flag.out}; the same command ingests "
              "the rest.", file=sys.stderr)
        return cli.INTERRUPTED_EXIT_CODE
    totals = manifest["totals"]
    print(f"{shards.summarize(manifest['sources'])} Shards and {shards.MANIFEST} in {flag.out}.")
    return 1 if totals["errors"] and not totals["pairs"] else 0


def _define_flags():
    from absl import flags

    from cmp_tf import cli

    flags.DEFINE_list("videos", None, "Video files or folders of videos; a folder of frame "
                      "images (two or more, no video) is one clip.")
    flags.DEFINE_list("lists", None, "Reference list files (img1 img2 flow...) to convert.")
    flags.DEFINE_string("out", None, "Output folder for shards and manifest.", required=True)
    # configs/ comes with the repository, not with an installed package: there the default is
    # the shipped model's recipe (main), which configs/default.py is
    default = DEFAULT_RECIPE if os.path.isfile(DEFAULT_RECIPE) or cli.checkout_has_recipes() \
        else None
    cli.define_config("config", default, "Recipe whose `ingest` section is used (default: "
                      f"{DEFAULT_RECIPE}, the shipped model's recipe).", lock_config=True)
    flags.DEFINE_integer("workers", os.cpu_count() or 1, "Local processes.")
    flags.DEFINE_string("runner", "local", "'local' (process pool) or a Beam runner name.")
    flags.DEFINE_string("beam_options", "", "Extra Beam pipeline options, space-separated.")


if __name__ == "__main__":
    from cmp_tf import cli

    _define_flags()
    cli.run(main)
