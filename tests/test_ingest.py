"""Videos -> teacher flow -> shards: drops, manifest, idempotence, resume, errors, Beam."""
import contextlib
import filecmp
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from cmp_tf.data import formats
from cmp_tf.data import ingest
from cmp_tf.data import pipeline
from cmp_tf.data import records
from cmp_tf.data import shards
from cmp_tf.data.synthetic import write_video
from tests.helpers import panning_frames

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = dict(gaps=(1,), max_side=-1, dis_preset="fast")


def _records(folder):
    out = []
    for shard in sorted(f for f in os.listdir(folder) if f.endswith(".tfrecord")):
        out += [records.decode_example(r) for r in tf.data.TFRecordDataset(str(folder / shard))]
    return out


def test_a_panning_video_becomes_pairs_with_its_motion(tmp_path):
    video = write_video(tmp_path / "pan.avi", panning_frames(6, step=(3, 2)))
    manifest = ingest.ingest([video], tmp_path / "out", CFG, progress=False)
    assert manifest["totals"]["pairs"] == 5 and manifest["totals"]["errors"] == 0
    source = manifest["sources"][0]
    assert source["frames"] == 6 and len(source["shards"]) == 1
    records = _records(tmp_path / "out")
    assert len(records) == 5
    image, flow, valid = (t.numpy() for t in records[0])
    assert image.shape == (64, 96, 3) and flow.shape == (64, 96, 2)
    # The scene pans by (3, 2) px a frame, so content moves by (-3, -2); DIS finds it inside.
    inner = flow[8:-8, 8:-8].reshape(-1, 2)
    np.testing.assert_allclose(np.median(inner, 0), [-3, -2], atol=0.25)
    assert valid[8:-8, 8:-8].mean() > 0.9


def test_static_pairs_and_scene_cuts_are_dropped_and_counted(tmp_path):
    still = panning_frames(1)[0]
    write_video(tmp_path / "still.avi", [still] * 4)
    cut = panning_frames(3, seed=1) + panning_frames(3, seed=2)
    write_video(tmp_path / "cut.avi", cut)
    manifest = ingest.ingest([tmp_path], tmp_path / "out", CFG, progress=False)
    by_name = {os.path.basename(s["video"]): s for s in manifest["sources"]}
    assert by_name["still.avi"]["pairs"] == 0 and by_name["still.avi"]["dropped"]["static"] == 3
    cut_drops = by_name["cut.avi"]["dropped"]
    assert by_name["cut.avi"]["pairs"] == 4
    assert cut_drops["scene_cut"] + cut_drops["inconsistent"] == 1


def test_a_bad_video_is_recorded_and_the_others_still_ingested(tmp_path):
    write_video(tmp_path / "good.avi", panning_frames(3))
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    manifest = ingest.ingest([tmp_path], tmp_path / "out", CFG, progress=False)
    assert manifest["totals"]["pairs"] == 2 and manifest["totals"]["errors"] == 1
    bad = [s for s in manifest["sources"] if s["error"]]
    assert "junk.mp4" in bad[0]["error"] and not bad[0]["shards"]
    with pytest.raises(ValueError, match="junk.mp4"):
        ingest.ingest([tmp_path / "junk.mp4"], tmp_path / "out2", {**CFG, "on_error": "raise"},
                      progress=False)
    with pytest.raises(ValueError, match="config.ingest has unknown fields \\['gap'\\]"):
        ingest.ingest([tmp_path], tmp_path / "out3", {"gap": 1}, progress=False)


class _Frame(np.ndarray):
    """A frame that can be watched: is it still held?"""


def _pairs(folder):
    """(frame, gap) of every example, in shard order."""
    out = []
    for shard in sorted(f for f in os.listdir(folder) if f.endswith(".tfrecord")):
        for raw in tf.data.TFRecordDataset(str(folder / shard)):
            example = tf.train.Example.FromString(raw.numpy()).features.feature
            out.append((example[records.FRAME].int64_list.value[0],
                        example[records.GAP].int64_list.value[0]))
    return out


def test_a_long_video_is_ingested_holding_only_the_frames_its_pairs_need(tmp_path, monkeypatch):
    """Frames are decoded one at a time: at most max(gaps) + 1 of them are alive while the
    teacher runs (a whole clip in memory was 12 GB for ten minutes at 640 px), and the pairs
    come out in the same order as before, frame by frame then gap by gap."""
    import weakref

    from cmp_tf.data import teacher

    video = write_video(tmp_path / "pan.avi", panning_frames(11))
    stream_video, make_estimator = formats.stream_video, teacher.make_estimator
    watched, alive = [], []

    def watched_stream(path, max_side=-1):
        stream, expected = stream_video(path, max_side)

        def frames():
            for frame in stream:
                frame = frame.view(_Frame)
                watched.append(weakref.ref(frame))
                yield frame
        return frames(), expected

    def counting_estimator(name, preset):
        estimate = make_estimator(name, preset)

        def counted(f1, f2):
            alive.append(sum(ref() is not None for ref in watched))
            return estimate(np.asarray(f1), np.asarray(f2))
        return counted

    monkeypatch.setattr(formats, "stream_video", watched_stream)
    monkeypatch.setattr(teacher, "make_estimator", counting_estimator)
    ticks = []
    cfg = {**CFG, "gaps": (1, 3), "frame_step": 2}
    record = ingest.ingest_video(video, tmp_path / "out", cfg, on_frame=lambda: ticks.append(1))
    assert record["frames"] == len(ticks) == len(watched) == 11 and not record["error"]
    assert alive and max(alive) <= 4
    expected = [(t, gap) for t in range(0, 11, 2) for gap in (1, 3) if t + gap < 11]
    assert _pairs(tmp_path / "out") == expected
    assert record["pairs"] == len(expected)


def test_one_frame_is_refused_and_the_bar_counts_frames_in_a_pool(tmp_path, capsys):
    write_video(tmp_path / "one.avi", panning_frames(1))
    record = ingest.ingest_video(str(tmp_path / "one.avi"), str(tmp_path / "out"), CFG)
    assert "one.avi has 1 decodable frames; need at least 2" in record["error"]
    (tmp_path / "clips").mkdir()
    for seed in range(2):
        write_video(tmp_path / "clips" / f"v{seed}.avi", panning_frames(5, seed=seed))
    manifest = ingest.ingest([tmp_path / "clips"], tmp_path / "out", CFG, workers=2)
    assert manifest["totals"]["pairs"] == 8
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()[-1]
    assert "10/10" in bar and "frame" in bar and "pairs=8" in bar and "files=2/2" in bar, bar
    # a pool worker reports each frame as its job's index
    import queue
    frames = queue.Queue()
    ingest._run_job(ingest.ingest_video, str(tmp_path / "clips" / "v0.avi"),
                    str(tmp_path / "other"), CFG, 7, frames)
    assert [frames.get() for _ in range(frames.qsize())] == [7] * 5


def test_a_gap_longer_than_the_clip_says_why_it_made_no_pair(tmp_path):
    """gaps=(10,) on a 6-frame clip gave "0 pairs from 1 of 1 files" and no reason."""
    video = write_video(tmp_path / "pan.avi", panning_frames(6, size=(32, 48)))
    manifest = ingest.ingest([video], tmp_path / "out", {**CFG, "gaps": (1, 10, 20)},
                             progress=False)
    source = manifest["sources"][0]
    assert source["pairs"] == 5 and source["warnings"] == [
        "gaps 10, 20 made no pair: the clip has 6 frames"]
    assert "pan.avi (gaps 10, 20 made no pair" in shards.summarize(manifest["sources"])


def test_a_second_run_skips_finished_videos(tmp_path):
    video = write_video(tmp_path / "pan.avi", panning_frames(4))
    ingest.ingest([video], tmp_path / "out", CFG, progress=False)
    before = {f: os.path.getmtime(tmp_path / "out" / f) for f in os.listdir(tmp_path / "out")
              if f.endswith(".tfrecord")}
    record = ingest.ingest_video(video, tmp_path / "out", CFG)
    assert record["skipped"]
    after = {f: os.path.getmtime(tmp_path / "out" / f) for f in before}
    assert after == before


def test_readers_take_only_the_current_configs_shards_of_a_video(tmp_path):
    """A cache holding the same video under two ingest configs must not feed it twice."""
    video = write_video(tmp_path / "pan.avi", panning_frames(4))
    old = {**CFG, "jpeg_quality": 80}
    old_shards, _ = pipeline.resolve_sources([video], tmp_path / "out", old)
    new_shards, _ = pipeline.resolve_sources([video], tmp_path / "out", CFG)
    assert len(old_shards) == len(new_shards) == 1 and old_shards != new_shards
    assert len(ingest.write_manifest(tmp_path / "out", CFG)["sources"]) == 2
    assert pipeline.resolve_sources([video], tmp_path / "out", old)[0] == old_shards


def test_a_list_converted_by_an_earlier_version_is_converted_again(tmp_path, monkeypatch):
    """Shards of a list converted before its unknown flow was filled hold zeros there: they
    are replaced, not reused as they are."""
    import cv2

    cv2.imwrite(str(tmp_path / "0.png"), np.zeros((12, 16, 3), np.uint8))
    formats.write_flo(tmp_path / "0.flo", np.ones((12, 16, 2), np.float32))
    (tmp_path / "train.txt").write_text("0.png 0.png 0.flo\n")
    monkeypatch.setattr(ingest, "LIST_FORMAT", ingest.LIST_FORMAT - 1)
    first = ingest.ingest([str(tmp_path / "train.txt")], tmp_path / "out", CFG,
                          progress=False)["sources"][0]
    monkeypatch.undo()
    again = ingest.ingest([str(tmp_path / "train.txt")], tmp_path / "out", CFG,
                          progress=False)["sources"]
    assert [s["key"] for s in again] != [first["key"]] and len(again) == 1
    assert not os.path.exists(tmp_path / "out" / first["shards"][0])


def test_an_edited_video_replaces_its_earlier_pairs(tmp_path):
    """Re-ingesting a video edited since leaves only the new version's pairs: the old ones
    were read beside them from the folder, and its old error stayed in the manifest."""
    video = write_video(tmp_path / "pan.avi", panning_frames(3))
    first = ingest.ingest([video], tmp_path / "out", CFG, progress=False)["sources"][0]
    other = write_video(tmp_path / "other.avi", panning_frames(3, seed=1))
    ingest.ingest([other], tmp_path / "out", CFG, progress=False)
    os.replace(write_video(tmp_path / "new.avi", panning_frames(6)), video)
    manifest = ingest.ingest([video, other], tmp_path / "out", CFG, progress=False)
    assert manifest["totals"]["pairs"] == 5 + 2 and len(manifest["sources"]) == 2
    replaced = next(s for s in manifest["sources"] if s["video"] == first["video"])
    assert replaced["key"] != first["key"] and replaced["pairs"] == 5
    assert "replaced 2 pairs ingested from an earlier version" in replaced["warnings"][0]
    left = sorted(os.listdir(tmp_path / "out"))
    assert not [f for f in left if f.startswith(first["key"])], left
    shards, _ = pipeline.resolve_sources([str(tmp_path / "out")], tmp_path / "cache", CFG)
    assert len(shards) == 2
    # another config of the same file is kept, and a folder holding both is refused by name
    ingest.ingest([video], tmp_path / "out", {**CFG, "jpeg_quality": 80}, progress=False)
    assert len(ingest.write_manifest(tmp_path / "out", CFG)["sources"]) == 3
    with pytest.raises(ValueError, match=r"holds 2 ingestions of .*pan\.avi \(pan-"):
        pipeline.resolve_sources([str(tmp_path / "out")], tmp_path / "cache", CFG)


def _write_frames(folder, frames, name="frame{}.png"):
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(frames, start=1):
        cv2.imwrite(str(folder / name.format(index)), frame[..., ::-1])
    return str(folder)


def test_folders_of_frames_are_clips_in_number_order(tmp_path):
    """A clip stored as one image per frame (DAVIS, Sintel, KITTI) is ingested as a video:
    frames in number order (frame10 after frame9, not after frame1), a frame of another size
    named, an edited frame re-ingested."""

    clips = tmp_path / "JPEGImages"
    bear = _write_frames(clips / "bear", panning_frames(11))
    odd = panning_frames(3, seed=1)
    _write_frames(clips / "odd", [odd[0], odd[1], odd[2][:40]])
    _write_frames(tmp_path / "mixed", panning_frames(2))  # beside a video: not a clip
    labels = tmp_path / "Annotations" / "bear"  # a dataset's label maps, indexed colour
    labels.mkdir(parents=True)
    from PIL import Image
    for index in range(3):
        mask = Image.fromarray(np.full((8, 8), index, np.uint8), mode="P")
        mask.putpalette([0, 0, 0, 200, 0, 0, 0, 200, 0] + [0] * 759)
        mask.save(labels / f"{index:05d}.png")
    assert formats.list_videos([tmp_path / "Annotations"]) == []
    write_video(tmp_path / "mixed" / "pan.avi", panning_frames(3))
    assert formats.list_videos([clips, tmp_path / "mixed"]) == [
        bear, str(clips / "odd"), str(tmp_path / "mixed" / "pan.avi")]
    manifest = ingest.ingest([clips], tmp_path / "out", CFG, progress=False)
    by_name = {os.path.basename(s["video"]): s for s in manifest["sources"]}
    assert by_name["bear"]["pairs"] == 10 and by_name["bear"]["frames"] == 11
    assert "frame3.png is 96x40 px; the clip's first frame" in by_name["odd"]["error"]
    image, flow, valid = (t.numpy() for t in _records(tmp_path / "out")[9])  # frame10 -> 11
    np.testing.assert_allclose(np.median(flow[8:-8, 8:-8].reshape(-1, 2), 0), [-3, -2],
                               atol=0.25)
    # training reads the folder of clips as it reads a folder of videos
    shards, _ = pipeline.resolve_sources([str(clips)], tmp_path / "out", CFG)
    assert len(shards) == 1
    # an edited frame makes the clip a new version, which replaces the old one's pairs
    time.sleep(0.01)
    _write_frames(clips / "bear", panning_frames(11, seed=5)[:1])
    again = ingest.ingest([bear], tmp_path / "out", CFG, progress=False)
    assert sorted(s["key"] for s in again["sources"]) != sorted(by_name[n]["key"] for n in
                                                                 by_name)
    assert len(again["sources"]) == 2


def test_a_frame_folder_is_one_clip_however_it_is_named(tmp_path):
    """`clips/bear/` (a shell's completion) and `clips/bear` are one clip: the slash gave it a
    second key, a shard name without a stem, and training then refused the folder. A copy's
    `._frame1.png` is not a frame, nor its `._clip.mp4` a video that would make the folder no
    clip; frames swapped by name are a new version of the clip."""
    import shutil

    clip = tmp_path / "clips" / "bear"
    _write_frames(clip, panning_frames(4))
    (clip / "._frame1.png").write_bytes(b"\x00\x05\x16\x07")
    (clip / "._clip.mp4").write_bytes(b"\x00\x05\x16\x07")
    assert formats.list_videos(tmp_path / "clips") == [str(clip)]
    first = ingest.ingest([f"{clip}/"], tmp_path / "out", CFG, progress=False)["sources"]
    assert len(first) == 1 and first[0]["key"].startswith("bear-") and not first[0]["error"]
    again = ingest.ingest([str(clip)], tmp_path / "out", CFG, progress=False)["sources"]
    assert [s["key"] for s in again] == [first[0]["key"]]
    shutil.move(clip / "frame1.png", clip / "swap.png")
    shutil.move(clip / "frame2.png", clip / "frame1.png")
    shutil.move(clip / "swap.png", clip / "frame2.png")
    swapped = ingest.ingest([str(clip)], tmp_path / "out", CFG, progress=False)["sources"]
    assert len(swapped) == 1 and swapped[0]["key"] != first[0]["key"]


def test_an_error_with_on_error_raise_stops_the_pool_at_once(tmp_path):
    """With workers, the first error (on_error="raise") waited for every queued file to be
    ingested before it was raised."""
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a_bad.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    for seed in range(6):  # about 0.3 s each
        write_video(tmp_path / "clips" / f"v{seed}.avi",
                    panning_frames(40, size=(96, 128), seed=seed))
    cfg = {**CFG, "gaps": (1, 2), "on_error": "raise"}
    with pytest.raises(ValueError, match="a_bad.mp4"):
        ingest.ingest([tmp_path / "clips"], tmp_path / "out", cfg, workers=2, progress=False)
    done = [f for f in os.listdir(tmp_path / "out") if f.endswith(".json")]
    assert len(done) < 6, done
    # what was cut short is redone by the next run, without the bad file
    os.remove(tmp_path / "clips" / "a_bad.mp4")
    manifest = ingest.ingest([tmp_path / "clips"], tmp_path / "out", cfg, workers=2,
                             progress=False)
    assert len(manifest["sources"]) == 6 and manifest["totals"]["errors"] == 0
    assert not [f for f in os.listdir(tmp_path / "out") if f.endswith(".tmp")]


@pytest.mark.slow
def test_sigterm_stops_the_pool_with_its_parent(tmp_path):
    """`kill` (SIGTERM) to ingestion with workers: the parent died alone and its workers ran
    on to the ends of their files. Now it stops them, as Ctrl-C does."""
    import signal

    (tmp_path / "clips").mkdir()
    for seed in range(4):  # several seconds each
        write_video(tmp_path / "clips" / f"v{seed}.avi",
                    panning_frames(200, size=(96, 128), seed=seed))
    out = tmp_path / "out"
    code = ("from cmp_tf.data import ingest; "
            f"ingest.ingest([{str(tmp_path / 'clips')!r}], {str(out)!r}, {CFG!r}, workers=2, "
            "progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out.exists() and any(
            f.endswith(".tmp") for f in os.listdir(out))):
        time.sleep(0.1)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                              text=True, check=False).stdout.split()
    assert len(children) >= 2, children  # the workers (and the frame counter's manager)
    proc.send_signal(signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # its workers hold its output open: end them all
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        raise
    assert proc.returncode != 0 and "KeyboardInterrupt: SIGTERM" in stderr, stderr[-2000:]

    def running(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # not a zombie
        except FileNotFoundError:
            return False

    deadline = time.time() + 10
    alive = children
    while alive and time.time() < deadline:
        alive = [pid for pid in alive if running(pid)]
        time.sleep(0.1)
    for pid in alive:  # not left running after the test, whatever it found
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    assert not alive, f"workers {alive} outlived their parent"
    assert not [f for f in os.listdir(out) if f.endswith(".json")]  # no file was let finish


@pytest.mark.slow
def test_a_killed_run_resumes_without_duplicate_shards(tmp_path):
    video = write_video(tmp_path / "pan.avi", panning_frames(40, size=(96, 128)))
    cfg = {**CFG, "pairs_per_shard": 1, "gaps": (1, 2)}
    ingest.ingest([video], tmp_path / "clean", cfg, progress=False)
    code = ("import sys; from cmp_tf.data import ingest; "
            f"ingest.ingest([{video!r}], {str(tmp_path / 'killed')!r}, {cfg!r}, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        out = tmp_path / "killed"
        if out.exists() and sum(f.endswith(".tmp") for f in os.listdir(out)) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "ingestion finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not any(f.endswith(".json") for f in os.listdir(tmp_path / "killed"))
    ingest.ingest([video], tmp_path / "killed", cfg, progress=False)
    shards = sorted(f for f in os.listdir(tmp_path / "clean") if f.endswith(".tfrecord"))
    assert sorted(f for f in os.listdir(tmp_path / "killed") if "tfrecord" in f) == shards
    for shard in shards:
        assert filecmp.cmp(tmp_path / "clean" / shard, tmp_path / "killed" / shard, shallow=False)


@pytest.mark.slow
def test_beam_direct_runner_writes_the_same_shards(tmp_path):
    videos = [write_video(tmp_path / f"v{i}.avi", panning_frames(4, seed=i)) for i in range(2)]
    local = ingest.ingest(videos, tmp_path / "local", CFG, workers=2, progress=False)
    beam = ingest.ingest_beam(videos, tmp_path / "beam", CFG, ["--runner=DirectRunner"])
    assert beam["totals"] == local["totals"]
    shards = sorted(f for f in os.listdir(tmp_path / "local") if f.endswith(".tfrecord"))
    assert shards == sorted(f for f in os.listdir(tmp_path / "beam") if f.endswith(".tfrecord"))
    for shard in shards:
        assert filecmp.cmp(tmp_path / "local" / shard, tmp_path / "beam" / shard, shallow=False)


def test_the_command_line_ingests_and_reports(tmp_path):
    write_video(tmp_path / "pan.avi", panning_frames(4))
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 100)

    def command(*overrides):
        return subprocess.run(
            [sys.executable, "-m", "cmp_tf.data.ingest", f"--videos={tmp_path}",
             f"--out={tmp_path / 'out'}", "--workers=1", "--config.ingest.max_side=-1",
             "--config.ingest.gaps=(1,)", *overrides],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))

    result = command()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith(
        "Ingestion: 3 pairs from 1 of 2 files. 1 of 2 files failed to ingest: junk.mp4")
    assert result.stdout.strip().endswith(f"Shards and {shards.MANIFEST} in {tmp_path / 'out'}.")
    assert (tmp_path / "out" / shards.MANIFEST).exists()
    # Another config into the same folder would feed the clip twice to training, which reads
    # the folder whole: refused before any file is read, naming the sidecar.
    before = sorted(os.listdir(tmp_path / "out"))
    other = command("--config.ingest.jpeg_quality=80")
    assert other.returncode != 0 and "Traceback" not in other.stderr
    assert (f"--out={tmp_path / 'out'} holds {tmp_path / 'junk.mp4'} and 1 more of these "
            "sources ingested under another ingest config (junk-") in other.stderr
    assert "Ingest this config into another --out" in other.stderr
    assert sorted(os.listdir(tmp_path / "out")) == before


def test_a_truncated_video_keeps_what_decodes_and_says_so(tmp_path):
    video = tmp_path / "pan.avi"
    write_video(video, panning_frames(8))
    video.write_bytes(video.read_bytes()[: int(video.stat().st_size * 0.6)])
    record = ingest.ingest_video(str(video), str(tmp_path / "out"), CFG)
    assert record["error"] is None and 0 < record["pairs"] < 7
    assert record["warnings"] and "truncated" in record["warnings"][0]


def test_list_files_convert_to_shards_and_bad_pairs_are_counted(tmp_path, rng):
    import cv2


    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), rng.integers(0, 255, (12, 16, 3), np.uint8))
        flow = np.full((12, 16, 2), 0.75 * i, np.float32)
        formats.write_flo(tmp_path / f"{i}.flo", flow)
    bad = np.zeros((12, 16, 2), np.float32)
    bad[3, 3] = np.nan
    header = np.array([202021.25], "<f4").tobytes() + np.array([16, 12], "<i4").tobytes()
    (tmp_path / "nan.flo").write_bytes(header + bad.astype("<f4").tobytes())
    lines = [f"{i}.png {i}.png {i}.flo" for i in range(3)] + ["0.png 0.png nan.flo",
                                                              "0.png 0.png gone.flo"]
    (tmp_path / "train.txt").write_text("\n".join(lines))
    manifest = ingest.ingest([str(tmp_path / "train.txt")], tmp_path / "out", CFG, progress=False)
    assert manifest["totals"]["pairs"] == 3 and manifest["totals"]["dropped"]["bad_file"] == 2
    warnings = manifest["sources"][0]["warnings"]
    assert any("train.txt:5: missing file" in w for w in warnings)
    assert any(w.startswith(f"{tmp_path / 'train.txt'}:4: ") and "nan.flo has 2 NaN" in w
               for w in warnings), warnings
    flows = [r[1].numpy() for r in _records(tmp_path / "out")]
    assert sorted(float(f.mean()) for f in flows) == [0.0, 0.75, 1.5]
    strict = {**CFG, "on_error": "raise"}
    with pytest.raises(ValueError, match="train.txt:5: missing file"):
        ingest.ingest([str(tmp_path / "train.txt")], tmp_path / "out2", strict, progress=False)
    (tmp_path / "train.txt").write_text("\n".join(lines[:4]))
    with pytest.raises(ValueError, match="nan.flo has 2 NaN"):
        ingest.ingest([str(tmp_path / "train.txt")], tmp_path / "out3", strict, progress=False)


def test_rlof_refuses_frames_too_small_for_its_interpolation(tmp_path):
    """OpenCV's dense RLOF reads past its matches on small frames (a segmentation fault on
    48 x 64 that killed the whole ingestion): such a file is now recorded as failed, saying
    why."""
    video = write_video(tmp_path / "small.avi", panning_frames(3, size=(48, 64)))
    manifest = ingest.ingest([video], tmp_path / "out", {**CFG, "estimator": "rlof"},
                             progress=False)
    error = manifest["sources"][0]["error"]
    assert error.startswith("config.ingest.estimator='rlof' needs frames with at least 128 "
                            "cells of 6 x 6 px (64 x 96 px has 160); got 48 x 64"), error


def test_frames_too_small_for_dis_are_refused_naming_the_setting(tmp_path):
    """DIS refuses frames under 8 px a side (or both under 12) with a cv2.error, not a
    ValueError: with on_error=raise the command ended in a traceback naming no file, and a
    skipped file's error was OpenCV's source line. A failing OpenCV teacher names the file."""
    import cv2

    from cmp_tf.data import teacher

    clip = tmp_path / "clip"
    clip.mkdir()
    for i, frame in enumerate(panning_frames(3, size=(8, 8))):
        cv2.imwrite(str(clip / f"{i:03d}.png"), frame)
    with pytest.raises(ValueError, match=r"estimator='dis' needs frames of at least 8 px a "
                                         r"side and 12 px on the longer; got 8 x 8: use larger "
                                         r"frames or max_side"):
        ingest.ingest([clip], tmp_path / "out", {**CFG, "on_error": "raise"}, progress=False)
    manifest = ingest.ingest([clip], tmp_path / "out", CFG, progress=False)
    assert "got 8 x 8" in manifest["sources"][0]["error"]
    assert teacher.make_estimator("dis")(*panning_frames(2, size=(8, 12))).shape == (8, 12, 2)

    def broken():
        def estimate(first, second):
            raise cv2.error("OpenCV(5.0.0) some.cpp:1: error: (-215) broken in 'calc'")
        return estimate

    big = tmp_path / "big"
    big.mkdir()
    for i, frame in enumerate(panning_frames(3, size=(24, 32))):
        cv2.imwrite(str(big / f"{i:03d}.png"), frame)
    saved = teacher.OPENCV_ESTIMATORS["farneback"]
    teacher.OPENCV_ESTIMATORS["farneback"] = broken
    try:
        with pytest.raises(ValueError, match=rf"{big}: the teacher failed on frames 0 and 1: "
                                             r"OpenCV\(5.0.0\) some.cpp:1: error"):
            ingest.ingest([big], tmp_path / "out2", {**CFG, "estimator": "farneback",
                                                     "on_error": "raise"}, progress=False)
    finally:
        teacher.OPENCV_ESTIMATORS["farneback"] = saved


@pytest.mark.parametrize("name,preset", [("dis", "fine"), ("deepflow", "medium"),
                                         ("rlof", "medium")])
def test_named_teachers_recover_a_pan_and_a_wrong_name_is_refused(name, preset):
    from cmp_tf.data import teacher

    first, second = panning_frames(count=2)
    flow = teacher.make_estimator(name, preset)(first, second)
    assert flow.shape == (64, 96, 2)
    inner = flow[12:-12, 12:-12].reshape(-1, 2)  # the frames pan by (3, 2): flow (-3, -2)
    np.testing.assert_allclose(np.median(inner, 0), (-3.0, -2.0), atol=0.25)
    with pytest.raises(ValueError, match=r"estimator='deep_flow': use 'dis', one of "
                                         r"farneback, tvl1, deepflow"):
        teacher.make_estimator("deep_flow")
    with pytest.raises(ValueError, match=r"dis_preset='finest'; known: ultrafast, fast, "
                                         r"medium, fine"):
        teacher.make_estimator("dis", "finest")
