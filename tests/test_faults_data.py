"""Faults a new user runs into with training data: each must be a clear error naming the file,
or a counted and named skip; never a hang, a silent loss, or a marker value trained on."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import cv2
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from cmp_tf.data import formats
from cmp_tf.data import ingest
from cmp_tf.data import pipeline
from cmp_tf.data import shards
from cmp_tf.data.synthetic import write_video
from tests.helpers import panning_frames

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (24, 32)  # frames of the list files below
CFG = dict(gaps=(1,), max_side=-1, dis_preset="fast")


def _config(train, val=(), cache_dir="cache", **data):
    data = dict(dict(short_size=24, crop=(16, 16), batch_size=2, shuffle_buffer=4,
                     on_error="skip"), **data)
    return ml_collections.ConfigDict(dict(
        seed=3,
        data=dict(train=train, val=val, cache_dir=str(cache_dir), **data),
        guidance=dict(strategies=("grid",), bg_ratio=1 / 8**2, nms_ks=5, max_num_guide=-1),
        ingest=CFG))


def _nan_flo(path):
    """A .flo whose header is right and whose flow is NaN: it loads, then fails its check."""
    header = np.array([formats.FLO_TAG], "<f4").tobytes() + np.array(SIZE[::-1], "<i4").tobytes()
    path.write_bytes(header + np.full((*SIZE, 2), np.nan, "<f4").tobytes())


def _list_file(folder, flows, rng):
    """A list file of `img img flo` lines, one per flow writer in `flows`."""
    lines = []
    for i, write in enumerate(flows):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 255, (*SIZE, 3), np.uint8))
        write(folder / f"{i}.flo")
        lines.append(f"{i}.png {i}.png {i}.flo\n")
    (folder / "list.txt").write_text("".join(lines))
    return str(folder / "list.txt")


def _run_python(code, timeout):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


# ------------------------------------------------- a list file whose every entry is unreadable


def test_a_list_of_unreadable_flow_stops_naming_the_source_and_the_count(tmp_path, rng):
    """Every .flo is NaN: training must stop with the list, the line and the count (it looped
    forever: repeat() then ignore_errors never yields), and the process must then exit: the
    readers once went on loading after the stop, and deleting the iterator while one was in
    Python hung or aborted 5 runs in 9. Run apart, so a hang fails the test; the
    stop is hit a few times in the one process, the iterator deleted each time."""
    listing = _list_file(tmp_path, [_nan_flo] * 3, rng)
    repeats = 4
    result = _run_python(f"""
        import tensorflow as tf
        from cmp_tf.data import pipeline
        from tests.test_faults_data import _config
        for _ in range({repeats} - 1):
            try:
                next(iter(pipeline.make_dataset(_config(({listing!r},)), "train")))
            except tf.errors.InvalidArgumentError:
                pass
        next(iter(pipeline.make_dataset(_config(({listing!r},)), "train")))
        """, timeout=180)
    assert result.returncode == 1, result.stderr[-2000:]
    message = f"config.data.train: {pipeline.MAX_BAD_IN_A_ROW} samples in a row could not be read"
    assert message in result.stderr
    assert f"the last: {listing}:" in result.stderr and "NaN" in result.stderr
    # Each skipped sample is named and counted as it goes, and the warnings stop with the run.
    assert f"skipping an unreadable sample of config.data.train (1 of 1 so far): {listing}:" \
        in result.stderr
    assert result.stderr.count("skipping an unreadable sample") == \
        repeats * pipeline.MAX_BAD_IN_A_ROW


def test_the_stop_at_unreadable_data_is_the_message_alone():
    """What training prints when it stops at unreadable data is cmp_tf's message, without the
    graph nodes TensorFlow wraps around it: under a distribution strategy there are several
    (the message below is TensorFlow's, from a MirroredStrategy train step), and the message
    once ran on to the last of them."""
    ours = ("config.data.train: 32 samples in a row could not be read (32 of 32 so far); the "
            "last: list.txt:2: flow in 1.flo has 1536 NaN values. Fix or remove that source.")
    raised = ("Graph execution error:\n\nDetected at node Assert/Assert defined at (most recent "
              "call last):\n<stack traces unavailable>\nError in user-defined function passed "
              "to MapDataset:11 transformation with iterator: Iterator::Root::Prefetch::"
              f"MapAndBatch::ParallelMapV2: assertion failed: [{ours}]\n\t [[{{{{node "
              "Assert/Assert}}]]\n\t [[MultiDeviceIteratorGetNextFromShard]]\n\t [[RemoteCall]]"
              "\n\t [[IteratorGetNext]] [Op:__inference_step_494]")
    error = tf.errors.InvalidArgumentError(None, None, raised)
    assert str(pipeline.unreadable_data(error)) == ours
    plain = tf.errors.InvalidArgumentError(None, None, "assertion failed: [x]")
    assert pipeline.unreadable_data(plain) is None


def test_an_unreadable_validation_list_fails_at_its_end_and_strict_mode_at_its_first(tmp_path,
                                                                                    rng):
    listing = _list_file(tmp_path, [_nan_flo] * 3, rng)
    config = _config((listing,), val=(listing,))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"config.data.val: none of its 3 samples could be read; the last: "
                             r".*list.txt:3: flow in .*2.flo has 1536 NaN"):
        list(pipeline.make_dataset(config, "val"))
    config.data.on_error = "raise"
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"list.txt:\d: flow in .*flo has"):
        next(iter(pipeline.make_dataset(config, "train")))


def test_a_few_unreadable_entries_are_skipped_and_counted(tmp_path, rng, capfd):
    good = lambda path: formats.write_flo(path, np.ones((*SIZE, 2), np.float32))  # noqa: E731
    listing = _list_file(tmp_path, [good, _nan_flo, good], rng)
    batches = list(pipeline.make_dataset(_config((listing,), val=(listing,)), "val"))
    assert sum(int(x["image"].shape[0]) for x, _ in batches) == 2
    assert f"(1 of 2 so far): {listing}:2: flow in" in capfd.readouterr().err


# ------------------------------------------------------------ SIGTERM while tf.data blocks


@pytest.mark.slow
def test_sigterm_ends_a_run_stuck_inside_the_input_pipeline(tmp_path, rng):
    """A read that never returns (a hung network drive) blocks the step inside TensorFlow, where
    Python's handlers never run: SIGTERM must still end the run, saying why."""
    good = lambda path: formats.write_flo(path, np.ones((*SIZE, 2), np.float32))  # noqa: E731
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    train, val = (_list_file(tmp_path / name, [good] * 2, rng) for name in ("train", "val"))
    started = tmp_path / "started"
    script = f"""
        import time
        from cmp_tf import training
        from cmp_tf.data import formats
        from tests.helpers import load_config

        read_pair = formats.read_pair

        def stuck(entry):  # validation reads; training blocks
            if entry.source.startswith({train!r}):
                time.sleep(3600)
            open({str(started)!r}, "w").close()
            return read_pair(entry)

        formats.read_pair = stuck
        training.SIGNAL_GRACE_S = 2
        config = load_config("cpu_bins", "runlocal")
        config.data.train, config.data.val = ({train!r},), ({val!r},)
        config.data.short_size, config.data.batch_size = 128, 2
        training.train(config, {str(tmp_path / "run")!r}, progress=False)
        """
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline and not started.exists():
            time.sleep(0.1)
        assert proc.poll() is None and started.exists(), "the run never read its data"
        time.sleep(10)  # past the preview batch: the training loop is the one waiting
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "SIGTERM received, and the training step did not return within 2 s" in log


# ------------------------------------------------------------- Middlebury's unknown flow


def test_unknown_flow_in_a_flo_file_is_invalid_never_motion(tmp_path, rng):
    flow = rng.uniform(-3, 3, (*SIZE, 2)).astype(np.float32)
    unknown = np.zeros(SIZE, bool)
    unknown[:, :10] = True  # a band of pixels with no ground truth, as Middlebury writes it
    raw = flow.copy()
    raw[unknown] = formats.FLO_UNKNOWN_VALUE
    raw[0, 11, 1] = 1e9  # one component at the threshold is unknown too
    unknown[0, 11] = True
    cv2.writeOpticalFlow(str(tmp_path / "m.flo"), raw)
    back, valid = formats.read_flow(tmp_path / "m.flo")
    np.testing.assert_array_equal(valid, (~unknown).astype(np.float32))
    np.testing.assert_array_equal(back[unknown], 0.0)  # no marker value left to spread
    np.testing.assert_array_equal(back[~unknown], flow[~unknown])
    formats.write_flo(tmp_path / "w.flo", flow, valid)
    np.testing.assert_array_equal(formats.read_flo(tmp_path / "w.flo")[1], valid)
    # Through the pipeline, and through ingestion into shards: invalid, and no huge motion.
    cv2.imwrite(str(tmp_path / "a.png"), rng.integers(0, 255, (*SIZE, 3), np.uint8))
    (tmp_path / "list.txt").write_text("a.png a.png m.flo\n")
    config = _config((str(tmp_path / "list.txt"),), val=(str(tmp_path / "list.txt"),),
                     crop=SIZE, short_size=SIZE[0])
    _, y = next(iter(pipeline.make_dataset(config, "val")))
    assert y["valid"].numpy()[0, :, :10].max() == 0 and y["valid"].numpy()[0, 1:, 12:].min() == 1
    assert np.abs(y["flow"].numpy()).max() < 10
    manifest = ingest.ingest([str(tmp_path / "list.txt")], tmp_path / "out", CFG, progress=False)
    assert manifest["totals"]["pairs"] == 1
    config.data.val = (str(tmp_path / "out"),)
    _, y = next(iter(pipeline.make_dataset(config, "val")))
    assert y["valid"].numpy()[0, :, :10].max() == 0 and np.abs(y["flow"].numpy()).max() < 10


# ------------------------------------------------------------------------ corrupt shards


@pytest.fixture(scope="module")
def shard_folder(tmp_path_factory):
    """A shard folder of one video: 5 pairs in one shard, with its sidecar."""
    folder = tmp_path_factory.mktemp("clip")
    video = write_video(folder / "pan.avi", panning_frames(6, size=(32, 48)))
    manifest = ingest.ingest([video], folder / "shards", CFG, progress=False)
    assert manifest["totals"]["pairs"] == 5
    return folder / "shards"


def _damaged_copy(folder, tmp_path, offset):
    """A copy of the shard folder with one byte of its shard flipped at `offset` (negative:
    from the end); returns (folder, shard path, records before the damaged one)."""
    copy = tmp_path / "shards"
    copy.mkdir()
    for name in os.listdir(folder):
        if name.endswith((".tfrecord", ".json")):
            (copy / name).write_bytes((folder / name).read_bytes())
    shard = next(copy.glob("*.tfrecord"))
    data = bytearray(shard.read_bytes())
    sizes = [len(r) + 16 for r in tf.data.TFRecordDataset(str(shard)).as_numpy_iterator()]
    offset %= len(data)
    data[offset] ^= 0xFF
    shard.write_bytes(bytes(data))
    before = int(np.searchsorted(np.cumsum(sizes), offset, side="right"))
    return copy, shard, before


def test_a_flipped_byte_drops_the_rest_of_a_shard_naming_it_and_counting(shard_folder, tmp_path,
                                                                        capfd):
    folder, shard, before = _damaged_copy(shard_folder, tmp_path, -100)  # inside the last
    assert before == 4
    config = _config((str(folder),), val=(str(folder),))
    kept = sum(int(x["image"].shape[0]) for x, _ in pipeline.make_dataset(config, "val"))
    assert kept == 4
    err = capfd.readouterr().err
    assert f"Shard {shard}: record 5 (at byte" in err
    assert "its other 1 of 5 records are lost (4 read)" in err


def test_a_shard_corrupt_from_its_first_record_names_the_file(shard_folder, tmp_path):
    folder, shard, before = _damaged_copy(shard_folder, tmp_path, 0)
    assert before == 0
    config = _config((str(folder),), val=(str(folder),))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=rf"none of its 1 samples could be read; the last: Shard {shard}: "
                             r"record 1 \(at byte 0\) is corrupt or truncated; its other 5 of 5"):
        list(pipeline.make_dataset(config, "val"))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=rf"config.data.train: {pipeline.MAX_BAD_IN_A_ROW} samples in a row "
                             rf"could not be read .*Shard {shard}: record 1"):
        next(iter(pipeline.make_dataset(config, "train")))


def test_a_shard_cut_between_records_is_named_not_read_as_whole(shard_folder, tmp_path,
                                                                 capfd):
    """A shard cut exactly at a record's boundary frames cleanly to its (new) end: its bytes
    matched its size and 3 of its 5 pairs were lost without a word, though the sidecar
    lists 5."""
    folder, shard, _ = _damaged_copy(shard_folder, tmp_path, 0)
    original = next(shard_folder.glob("*.tfrecord"))
    sizes = [len(r) + 16 for r in tf.data.TFRecordDataset(str(original)).as_numpy_iterator()]
    shard.write_bytes(original.read_bytes()[:sum(sizes[:2])])
    config = _config((str(folder),), val=(str(folder),))
    kept = sum(int(x["image"].shape[0]) for x, _ in pipeline.make_dataset(config, "val"))
    assert kept == 2
    assert (f"Shard {shard} ends after 2 records where its sidecar lists 5: it was cut short "
            "or replaced since it was ingested (3 lost)") in capfd.readouterr().err
    config.data.on_error = "raise"
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"Shard {shard} ends after 2"):
        list(pipeline.make_dataset(config, "val"))


def test_shards_no_sidecar_lists_are_named_not_dropped_silently(shard_folder, tmp_path,
                                                                monkeypatch):
    """A folder whose sidecars list its shards reads only those: a shard copied in without
    its sidecar (two folders merged) was left out without a word."""
    folder, shard, _ = _damaged_copy(shard_folder, tmp_path, 0)
    shard.write_bytes(next(shard_folder.glob("*.tfrecord")).read_bytes())  # undamaged
    (folder / "other-0123456789-0000.tfrecord").write_bytes(shard.read_bytes())
    warned = []
    monkeypatch.setattr(tf.get_logger(), "warning", warned.append)
    config = _config((str(folder),), val=(str(folder),))
    assert sum(int(x["image"].shape[0]) for x, _ in pipeline.make_dataset(config, "val")) == 5
    assert any(w.startswith(f"config.data.val: 1 shards in {folder} are listed by no ingestion "
                            "sidecar and are not read (other-0123456789-0000.tfrecord)")
               for w in warned), warned


def test_a_healthy_shard_is_read_whole_and_unchanged(shard_folder):
    """The corruption check adds nothing to a good shard's stream."""
    config = _config((str(shard_folder),), val=(str(shard_folder),))
    assert sum(int(x["image"].shape[0]) for x, _ in pipeline.make_dataset(config, "val")) == 5


# -------------------------------------------------- other files in an ingestion folder


def test_ingesting_beside_an_unrelated_json_leaves_it_alone(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "labels.json").write_text(json.dumps({"cat": 1}))
    (out / "list.json").write_text("[1, 2]")
    (out / "broken.json").write_text("{not json")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    video = write_video(tmp_path / "pan.avi", panning_frames(4, size=(32, 48)))
    manifest = ingest.ingest([video], out, CFG, progress=False)
    assert manifest["totals"]["videos"] == 1 and manifest["totals"]["pairs"] == 3
    assert manifest["ignored"] == ["broken.json", "labels.json", "list.json"]
    assert {name: (out / name).read_bytes() for name in before} == before
    shards_found, _ = pipeline.resolve_sources([str(out)], tmp_path / "cache", CFG)
    assert len(shards_found) == 1


# ------------------------------------------------------ what ingestion made of the videos


def test_failed_and_dropped_videos_are_summarized_for_the_run(tmp_path):
    write_video(tmp_path / "pan.avi", panning_frames(4))
    write_video(tmp_path / "still.avi", [panning_frames(1)[0]] * 3)
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    config = _config((str(tmp_path),), cache_dir=tmp_path / "cache")
    assert pipeline.ingestion_summary(config) == "Ingestion: none of the 3 videos is ingested yet."
    pipeline.make_dataset(config, "train")
    text = pipeline.ingestion_summary(config)
    assert text.startswith("Ingestion: 3 pairs from 2 of 3 files. 1 of 3 files failed to "
                           "ingest: junk.mp4 (Video file ")
    assert text.endswith("Dropped 2 pairs: 2 static.")
    assert shards.summarize(ingest.write_manifest(tmp_path / "cache", CFG)["sources"]) == text


def test_a_rerun_mends_what_an_earlier_ingestion_left_failed_or_broken(tmp_path):
    """A source that failed in an earlier run is tried again (its cause may be fixed), and so
    is one whose record does not read back or whose shard was deleted since: each once stuck
    for good, the deleted shard stopping training at every start. A failure from this
    process (another worker of one job) is not tried again."""
    video = write_video(tmp_path / "pan.avi", panning_frames(4, size=(32, 48)))
    out = tmp_path / "out"
    record = ingest.ingest_video(video, out, CFG)
    sidecar = out / f"{record['key']}.json"
    shard = out / record["shards"][0]

    def again():
        return ingest.ingest_video(video, out, CFG)

    shard.unlink()
    mended = again()
    assert not mended["skipped"] and shard.exists() and mended["pairs"] == 3
    assert mended["warnings"] == [f"ingested again: its shard {shard.name} was missing"]
    sidecar.write_text(sidecar.read_text()[:40])
    mended = again()
    assert not mended["skipped"] and json.loads(sidecar.read_text())["pairs"] == 3
    assert mended["warnings"][0].startswith(f"ingested again: its record {sidecar} did not")
    failed = {**json.loads(sidecar.read_text()), "error": "Video file pan.avi broke",
              "shards": [], "pairs": 0}
    sidecar.write_text(json.dumps(failed))
    assert again()["skipped"]  # failed during this process: not tried again
    os.utime(sidecar, (time.time() - 3600,) * 2)  # failed in an earlier run
    mended = again()
    assert not mended["skipped"] and mended["pairs"] == 3 and mended["error"] is None
    assert mended["warnings"] == ["ingested again: it failed before (Video file pan.avi broke)"]
    assert again()["skipped"]
    text = shards.summarize([mended])
    assert "1 of 1 files with warnings: pan.avi (ingested again: it failed before" in text


def test_a_name_opencv_cannot_open_fails_that_file_alone(tmp_path):
    """A file name that is not UTF-8 (Latin-1, from an old archive) crashed OpenCV's reader
    and with it the whole ingestion, naming nothing."""
    clips = tmp_path / "clips"
    clips.mkdir()
    write_video(clips / "good.avi", panning_frames(3, size=(32, 48)))
    latin = os.path.join(os.fsencode(clips), b"caf\xe9.avi")
    with open(latin, "wb") as f:
        f.write((clips / "good.avi").read_bytes())
    name = os.fsdecode(latin)
    for read in (formats.read_image, lambda p: formats.stream_video(p, -1)):
        with pytest.raises(ValueError, match="not UTF-8, which OpenCV cannot open: rename it"):
            read(name)
    assert formats.video_frame_count(name) == -1
    manifest = ingest.ingest([clips], tmp_path / "out", CFG, progress=False)
    assert manifest["totals"]["pairs"] == 2 and manifest["totals"]["errors"] == 1
    assert "not UTF-8" in [s for s in manifest["sources"] if s["error"]][0]["error"]


def test_linked_clip_folders_are_found_and_a_source_named_twice_is_read_once(tmp_path):
    store, linked = tmp_path / "store", tmp_path / "linked"
    (store / "a").mkdir(parents=True)
    write_video(store / "a" / "pan.avi", panning_frames(3, size=(32, 48)))
    linked.mkdir()
    (linked / "a").symlink_to(store / "a")
    (linked / "a" / "loop").symlink_to(linked)  # a link back up must not walk forever
    assert formats.list_videos(linked) == [str(linked / "a" / "pan.avi")]
    cache = tmp_path / "cache"
    once, _ = pipeline.resolve_sources([str(linked)], cache, CFG)
    shard = once[0]
    twice, _ = pipeline.resolve_sources(
        [str(linked), str(linked) + "/", str(store / "a" / "pan.avi"), str(cache), shard],
        cache, CFG)
    assert len(once) == 1 and twice == once


def test_dotted_frame_counters_are_not_read_as_decimals(tmp_path):
    """cam1.1 ... cam1.11: as decimals 1.1 and 1.10 are one number, and the folder came out
    1.1, 1.10, 1.11, 1.2, 1.9 (ties in the file system's order)."""
    names = ["cam1.1.png", "cam1.2.png", "cam1.9.png", "cam1.10.png", "cam1.11.png"]
    for name in reversed(names):
        cv2.imwrite(str(tmp_path / name), np.zeros((4, 4, 3), np.uint8))
    assert [os.path.basename(p) for p in formats.frame_files(tmp_path)] == names


def test_a_custom_teachers_flow_is_checked_naming_the_field(tmp_path, monkeypatch):
    (tmp_path / "my_teachers.py").write_text(textwrap.dedent("""
        import numpy as np
        def f64(a, b):
            return np.zeros(a.shape[:2] + (2,), np.float64)
        def half(a, b):
            return np.zeros((a.shape[0] // 2, a.shape[1], 2), np.float32)
        def channels_first(a, b):
            return np.zeros((2,) + a.shape[:2], np.float32)
        NOT_A_FUNCTION = 3
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    video = write_video(tmp_path / "pan.avi", panning_frames(3, size=(32, 48)))
    made = ingest.ingest([video], tmp_path / "f64", {**CFG, "estimator": "my_teachers:f64"},
                         progress=False)
    assert made["totals"]["errors"] == 0 and made["totals"]["dropped"]["static"] == 2
    for name in ("half", "channels_first"):
        made = ingest.ingest([video], tmp_path / name,
                             {**CFG, "estimator": f"my_teachers:{name}"}, progress=False)
        error = made["sources"][0]["error"]
        assert f"config.ingest.estimator='my_teachers:{name}' returned float32 flow of shape" \
            in error and "expected float [H, W, 2] = (32, 48, 2)" in error
    with pytest.raises(ValueError, match="'my_teachers:NOT_A_FUNCTION' is a int, not a func"):
        ingest.ingest([video], tmp_path / "x", {**CFG, "estimator": "my_teachers:NOT_A_FUNCTION"},
                      progress=False)


def test_a_shard_record_that_does_not_decode_is_named_as_input_not_a_crash():
    """A record whose framing checks out but whose frame is not an image (a shard another tool
    wrote): training stopped with TensorFlow's traceback and saved nothing."""
    raised = ("Graph execution error:\n\nDetected at node case/cond/DecodeJpeg defined at "
              "(most recent call last):\n<stack traces unavailable>\nError in user-defined "
              "function passed to ParallelMapDatasetV2:8 transformation with iterator: Iterator::"
              "Root::Prefetch::MapAndBatch::ParallelMapV2::Filter::TakeWhile::Scan::ParallelMapV2"
              ": Unknown image file format. One of JPEG, JPEG XL, PNG, GIF, BMP, WebP required.\n"
              "\t [[{{node case/cond/DecodeJpeg}}]]\n\t [[IteratorGetNext]] "
              "[Op:__inference_train_step_25172]")
    failure = pipeline.unreadable_data(tf.errors.InvalidArgumentError(None, None, raised))
    assert str(failure).startswith(
        "A sample of the input could not be decoded (Unknown image file format. One of JPEG, "
        "JPEG XL, PNG, GIF, BMP, WebP required. at case/cond/DecodeJpeg): a shard not written")


def test_a_shard_from_another_tool_stops_reading_as_a_data_error(shard_folder, tmp_path):
    """The same, read for real: a shard whose second record's frame is no image."""
    from cmp_tf.data import records

    good = next(shard_folder.glob("*.tfrecord"))
    folder = tmp_path / "foreign"
    folder.mkdir()
    with tf.io.TFRecordWriter(str(folder / "foreign-0000.tfrecord")) as writer:
        for index, raw in enumerate(tf.data.TFRecordDataset(str(good)).as_numpy_iterator()):
            example = tf.train.Example.FromString(raw)
            if index == 1:
                example.features.feature[records.IMAGE1].bytes_list.value[0] = b"not a frame"
            writer.write(example.SerializeToString())
    config = _config((str(folder),), val=(str(folder),))
    with pytest.raises(pipeline.DataError, match=r"A sample of the input could not be decoded "
                                                 r"\(.* at .*DecodeJpeg") as stopped:
        list(pipeline.batches(pipeline.make_dataset(config, "val")))
    shards = [str(good), str(folder / "foreign-0000.tfrecord")]
    named = pipeline.name_undecodable(stopped.value, shards)
    assert str(named).startswith(str(stopped.value))
    assert str(named).endswith(f"It is {shards[1]}: its record 2 does not decode (Unknown image "
                               "file format. One of JPEG, JPEG XL, PNG, GIF, BMP, WebP "
                               "required.).")
    assert pipeline.first_undecodable(shards[:1]) is None


def test_validation_with_no_valid_pixel_is_refused_not_scored_zero():
    """Every EPE over no pixel read 0: the model 'as good as' every fill, in summary.json."""
    from cmp_tf.evaluation import propagation

    x = {"image": tf.zeros((2, 16, 16, 3)), "sparse": tf.zeros((2, 16, 16, 3))}
    y = {"flow": tf.ones((2, 16, 16, 2)), "valid": tf.zeros((2, 16, 16))}
    dataset = tf.data.Dataset.from_tensors((x, y))

    def model(inputs, training=False):
        return {"flow": tf.zeros_like(inputs["image"][..., :2])}

    with pytest.raises(ValueError, match="2 samples have no valid flow pixel: nothing to score"):
        propagation.evaluate_dataset(model, dataset)
    y["valid"] = tf.ones((2, 16, 16))
    assert propagation.evaluate_dataset(model, tf.data.Dataset.from_tensors((x, y)))["epe"] == \
        pytest.approx({"cmp": 2 ** 0.5, "zero": 2 ** 0.5, "nearest": 2 ** 0.5})
