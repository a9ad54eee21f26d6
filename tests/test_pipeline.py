"""tf.data pipeline: geometry keeps image and flow aligned, sources, resume, sharding, errors."""
import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from cmp_tf import flow as flow_lib
from cmp_tf.data import formats
from cmp_tf.data import ingest
from cmp_tf.data import pipeline
from cmp_tf.data import synthetic
from tests.helpers import panning_frames


def _config(train, val=(), cache_dir="cache", batch=2, crop=(32, 32), **data):
    return ml_collections.ConfigDict(dict(
        seed=3,
        data=dict(train=train, val=val, cache_dir=str(cache_dir), short_size=48, crop=crop,
                  batch_size=batch, flip=True, shuffle_buffer=16, on_error="raise", **data),
        guidance=dict(strategies=("grid", "watershed"), bg_ratio=1 / 16**2, nms_ks=9,
                      max_num_guide=-1),
        ingest=dict(gaps=(1,), max_side=-1, dis_preset="fast")))


def test_flip_negates_u_and_keeps_frames_and_flow_aligned():
    frame1, frame2, flow = synthetic.moving_square(64, 24, (-2, 1), (5, -3))
    f1, fl, _ = pipeline.flip(tf.constant(frame1, tf.float32), tf.constant(flow),
                              tf.ones((64, 64)))
    f2 = frame2[:, ::-1].astype(np.float32)
    np.testing.assert_array_equal(fl.numpy()[0, 0], [2, 1])  # background moved left -> right
    warped, inside = flow_lib.warp_backward(f2, fl.numpy())
    exact = np.abs(warped - f1.numpy()).max(-1) < 1e-3
    assert exact[inside > 0].mean() > 0.8  # the flipped flow still maps frame 1 to frame 2


def test_crop_cuts_image_flow_and_valid_at_the_same_place():
    image = tf.reshape(tf.range(10 * 12 * 3, dtype=tf.float32), (10, 12, 3))
    flow = image[..., :2] + 0.5
    valid = image[..., 0] + 0.25
    seed = tf.constant([1, 2], tf.int64)
    ci, cf, cv = pipeline.crop(image, flow, valid, (4, 6), seed)
    np.testing.assert_array_equal(cf.numpy(), ci.numpy()[..., :2] + 0.5)
    np.testing.assert_array_equal(cv.numpy(), ci.numpy()[..., 0] + 0.25)
    same = pipeline.crop(image, flow, valid, (4, 6), seed)[0]
    np.testing.assert_array_equal(same.numpy(), ci.numpy())  # stateless: same seed, same crop
    centre = pipeline.crop(image, flow, valid, (4, 6))[0].numpy()
    np.testing.assert_array_equal(centre, image.numpy()[3:7, 3:9])
    padded = pipeline.crop(image, flow, valid, (14, 12))[0].numpy()
    assert padded.shape == (14, 12, 3) and padded[:2].max() == 0  # centre-padded with zeros


def test_resize_short_side_scales_the_flow_vectors():
    image = tf.zeros((100, 200, 3), tf.uint8)
    flow = tf.ones((100, 200, 2)) * tf.constant([4.0, 2.0])
    image, flow, valid = pipeline.resize_short_side(image, flow, tf.ones((100, 200)), 50)
    assert tuple(image.shape) == (50, 100, 3) and tuple(valid.shape) == (50, 100)
    np.testing.assert_allclose(flow.numpy()[10, 10], [2.0, 1.0], atol=1e-5)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    return [synthetic.write_video(folder / f"pan{i}.avi", panning_frames(7, seed=i))
            for i in range(2)]


def test_videos_are_ingested_on_first_use_and_batched(videos, tmp_path):
    config = _config(videos, cache_dir=tmp_path / "cache")
    x, y = next(iter(pipeline.make_dataset(config, "train")))
    assert x["image"].shape == (2, 32, 32, 3) and x["sparse"].shape == (2, 32, 32, 3)
    assert y["flow"].shape == (2, 32, 32, 2) and y["valid"].shape == (2, 32, 32)
    mask = x["sparse"][..., 2].numpy()
    assert mask.sum() >= 2  # grid points at least
    # Guidance vectors are the flow at the guided pixels.
    np.testing.assert_allclose(x["sparse"].numpy()[..., :2][mask > 0],
                               y["flow"].numpy()[mask > 0], atol=1e-5)


def test_resume_sees_the_same_samples(videos, tmp_path):
    config = _config(videos, cache_dir=tmp_path / "cache")
    full = list(pipeline.make_dataset(config, "train").take(5))
    resumed = list(pipeline.make_dataset(config, "train", start_step=3).take(2))
    for (xa, ya), (xb, yb) in zip(full[3:], resumed):
        np.testing.assert_array_equal(xa["image"].numpy(), xb["image"].numpy())
        np.testing.assert_array_equal(xa["sparse"].numpy(), xb["sparse"].numpy())
        np.testing.assert_array_equal(ya["flow"].numpy(), yb["flow"].numpy())


def test_layered_scenes_replace_the_configured_share_of_samples_and_resume(videos, tmp_path):
    video = list(pipeline.make_dataset(_config(videos, cache_dir=tmp_path / "cache"),
                                       "train").take(6))
    config = _config(videos, cache_dir=tmp_path / "cache", layered=dict(ratio=0.5))
    mixed = list(pipeline.make_dataset(config, "train").take(6))
    replaced = [not np.array_equal(a[1]["flow"].numpy()[i], b[1]["flow"].numpy()[i])
                for a, b in zip(video, mixed) for i in range(2)]
    assert 2 <= sum(replaced) <= 10  # ~half of 12 samples
    valid = np.concatenate([y["valid"].numpy() for _, y in mixed])
    assert valid[np.array(replaced)].min() == 1.0  # exact flow: valid everywhere
    x, y = mixed[0]
    mask = x["sparse"][..., 2].numpy() > 0  # guidance is drawn from the samples' own flow
    np.testing.assert_allclose(x["sparse"].numpy()[..., :2][mask], y["flow"].numpy()[mask])
    resumed = list(pipeline.make_dataset(config, "train", start_step=4).take(2))
    for (xa, ya), (xb, yb) in zip(mixed[4:], resumed):
        np.testing.assert_array_equal(xa["image"].numpy(), xb["image"].numpy())
        np.testing.assert_array_equal(ya["flow"].numpy(), yb["flow"].numpy())
    config.data.layered = dict(ratio=0.5, layer=(1, 2))
    with pytest.raises(ValueError, match=r"Unknown config.data.layered fields \['layer'\]"):
        pipeline.make_dataset(config, "train")


def test_input_pipelines_read_disjoint_parts(videos, tmp_path):
    config = _config(videos, val=videos, cache_dir=tmp_path / "cache", batch=4)

    def images(context):
        return {x["image"].numpy()[i].tobytes() for x, _ in
                pipeline.make_dataset(config, "val", input_context=context)
                for i in range(x["image"].shape[0])}

    everything = images(None)
    parts = [images(tf.distribute.InputContext(2, i, 2)) for i in range(2)]
    assert not parts[0] & parts[1] and parts[0] | parts[1] == everything
    assert len(everything) == 12  # 2 videos x 6 pairs, each once


def test_list_files_feed_the_same_pipeline(tmp_path, rng):
    import cv2

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), rng.integers(0, 255, (40, 56, 3), np.uint8))
        formats.write_flo(tmp_path / f"{i}.flo", np.full((40, 56, 2), 1.5, np.float32))
    (tmp_path / "train.txt").write_text("".join(f"{i}.png {i}.png {i}.flo\n" for i in range(3)))
    config = _config([str(tmp_path / "train.txt")], val=[str(tmp_path / "train.txt")])
    x, y = next(iter(pipeline.make_dataset(config, "val")))
    assert x["image"].shape[1:] == (32, 32, 3)
    # 40x56 -> 48x67: each component scales with its own axis (56 * 1.2 rounds to 67).
    np.testing.assert_allclose(y["flow"].numpy()[..., 0], 1.5 * 67 / 56, atol=1e-4)
    np.testing.assert_allclose(y["flow"].numpy()[..., 1], 1.5 * 48 / 40, atol=1e-4)


def _half_known_list(folder, rng):
    """A list of one pair whose flow is known, (-15, 3) px, on the right half only: its .flo
    holds 0 on the left. Returns (flow, valid) as written."""
    import cv2

    flow = np.zeros((40, 40, 2), np.float32)
    flow[:, 20:] = (-15.0, 3.0)
    valid = np.zeros((40, 40), bool)
    valid[:, 20:] = True
    cv2.imwrite(str(folder / "a.png"), rng.integers(0, 255, (40, 40, 3), np.uint8))
    formats.write_flo(folder / "a.flo", flow, valid)
    (folder / "val.txt").write_text("a.png a.png a.flo\n")
    return flow, valid


def test_a_lists_unknown_flow_blends_into_no_known_flow(tmp_path, rng):
    """A list's unknown flow reads 0, not a motion: resized, known pixels keep their own."""
    flow, valid = _half_known_list(tmp_path, rng)
    config = _config([str(tmp_path / "val.txt")], val=[str(tmp_path / "val.txt")], crop=(48, 48))
    _, y = next(iter(pipeline.make_dataset(config, "val")))
    known = y["valid"].numpy()[0] > 0
    assert 0.4 < known.mean() < 0.6
    np.testing.assert_allclose(y["flow"].numpy()[0][known], np.tile([-18.0, 3.6], (known.sum(),
                                                                                   1)), rtol=1e-5)
    filled = formats.fill_unknown_flow(np.where(valid[..., None], flow, 0), valid)
    np.testing.assert_array_equal(filled, np.tile([-15.0, 3.0], (40, 40, 1)))
    # Motion beyond +-512 px reads as unknown, as it does once ingested into shards.
    flow[:, 30:] = (1e8, 0.0)
    formats.write_flo(tmp_path / "a.flo", flow, valid)
    _, y = next(iter(pipeline.make_dataset(config, "val")))
    assert 0.15 < (y["valid"].numpy()[0] > 0).mean() < 0.35
    assert np.abs(y["flow"].numpy()).max() < 20


def test_a_list_converted_to_shards_trains_on_the_flow_it_does_read_directly(tmp_path, rng):
    """`ingest --lists` stored a list's unknown flow as 0, which the resize blended into the
    known flow beside it (-16.5 px where -18 is right): the same list trained on other targets
    once converted. It is filled as the pipeline fills a list read directly."""
    _half_known_list(tmp_path, rng)
    ingest.ingest([str(tmp_path / "val.txt")], tmp_path / "shards", progress=False)
    read = {}
    for source in (tmp_path / "val.txt", tmp_path / "shards"):
        config = _config([str(source)], val=[str(source)], crop=(48, 48))
        _, y = next(iter(pipeline.make_dataset(config, "val")))
        read[source.name] = y["valid"].numpy()[0], y["flow"].numpy()[0]
    (valid_list, flow_list), (valid_shards, flow_shards) = read["val.txt"], read["shards"]
    np.testing.assert_array_equal(valid_shards, valid_list)
    known = valid_shards > 0
    np.testing.assert_allclose(flow_shards[known], flow_list[known], atol=1 / 64)
    np.testing.assert_allclose(flow_shards[known], np.tile([-18.0, 3.6], (known.sum(), 1)),
                               atol=1 / 64)


def test_bad_sources_fail_naming_the_field(tmp_path, videos):
    with pytest.raises(ValueError, match="config.data.train: .*missing.mp4 does not exist"):
        pipeline.make_dataset(_config([str(tmp_path / "missing.mp4")]), "train")
    with pytest.raises(ValueError, match="config.data.val is empty"):
        pipeline.make_dataset(_config(videos), "val")
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(ValueError, match="notes.md is not a shard, list file"):
        pipeline.make_dataset(_config([str(tmp_path / "notes.md")]), "train")


def test_a_corrupt_shard_is_skipped_or_raised_by_config(videos, tmp_path):
    cache = tmp_path / "cache"
    ingest.ingest(videos[:1], cache, _config([]).ingest.to_dict(), progress=False)
    shard = next(p for p in cache.iterdir() if p.suffix == ".tfrecord")
    data = bytearray(shard.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)  # damage records in the middle
    shard.write_bytes(bytes(data))
    config = _config([str(cache)], val=[str(cache)], cache_dir=cache)
    config.data.on_error = "skip"
    kept = sum(int(x["image"].shape[0]) for x, _ in pipeline.make_dataset(config, "val"))
    assert 0 < kept < 6
    config.data.on_error = "raise"
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"Shard {shard}: record"):
        for _ in pipeline.make_dataset(config, "val"):
            pass


@pytest.mark.parametrize("degrees", [90.0, -30.0])
def test_rotation_turns_the_vectors_with_the_frame(degrees):
    frame1, frame2, flow = synthetic.moving_square(96, 32, (-2, 1), (5, -3))
    valid = tf.ones((96, 96))
    r1, rflow, rvalid = pipeline.rotate(tf.constant(frame1, tf.float32), tf.constant(flow),
                                        valid, degrees)
    r2 = pipeline.rotate(tf.constant(frame2, tf.float32), tf.constant(flow), valid, degrees)[0]
    if degrees == 90.0:  # screen-ccw: the background's (-2, 1) (left, down) turns to (1, 2)
        np.testing.assert_allclose(rflow.numpy()[5, 48], [1, 2], atol=1e-4)
    warped, inside = flow_lib.warp_backward(r2.numpy(), rflow.numpy())
    ok = (inside > 0) & (rvalid.numpy() > 0)
    close = np.abs(warped - r1.numpy()).max(-1) < 12  # bilinear resampling blurs the textures
    assert close[ok].mean() > 0.8
    assert rvalid.numpy().mean() < 1 or degrees == 90.0  # corners come in from outside


def test_motion_augmentations_change_the_flow_only_and_rotate_every_direction_alike():
    flow = tf.constant([[[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0]]])  # right, left, down
    angles, scales, signs = set(), set(), set()
    for i in range(40):
        seed = tf.constant([7, i], tf.int64)
        out = pipeline.augment_motion(flow, seed, rotate=True).numpy()[0]
        np.testing.assert_allclose(np.linalg.norm(out, axis=-1), [1, 1, 2], atol=1e-5)
        turn = [np.arctan2(o[1], o[0]) - np.arctan2(f[1], f[0]) for o, f in
                zip(out, flow.numpy()[0])]
        turn = np.mod(np.array(turn) + np.pi, 2 * np.pi) - np.pi
        assert np.ptp(np.unwrap(turn)) < 1e-4  # left-pointing vectors turn like the others
        angles.add(round(float(turn[0]), 3))
        scaled = pipeline.augment_motion(flow, seed, scale=(0.5, 2.0)).numpy()[0]
        factor = scaled[0, 0]
        assert 0.5 <= factor <= 2.0
        np.testing.assert_allclose(scaled, factor * flow.numpy()[0], rtol=1e-6)
        scales.add(round(float(factor), 3))
        signs.add(float(pipeline.augment_motion(flow, seed, reverse=True).numpy()[0, 0, 0]))
    assert 0.0 in angles and len(angles) > 10  # half unrotated, the rest spread out
    assert len(scales) > 10 and signs == {1.0, -1.0}


def test_each_random_choice_draws_from_its_own_stream():
    """Layered scenes and flow reversal drew one number: with half the samples layered, no
    video sample kept was ever reversed (0 of 199 over 400 seeds)."""
    assert len(set(pipeline.STREAMS.values())) == len(pipeline.STREAMS)
    flow = tf.constant([[[1.0, 0.0]]])
    kept, reversed_ = 0, 0
    for i in range(200):
        seed = tf.constant([0, i], tf.int64)
        layered = float(pipeline.draw(seed, "layered"))
        if layered >= 0.5:  # a video sample under layered.ratio = 0.5
            kept += 1
            reversed_ += float(pipeline.augment_motion(flow, seed, reverse=True)[0, 0, 0]) < 0
    assert 0.35 < reversed_ / kept < 0.65, (reversed_, kept)


def test_guidance_is_drawn_from_the_augmented_motion(videos, tmp_path):
    config = _config(videos, cache_dir=tmp_path / "cache", flow_scale=(2.0, 2.0))
    plain = next(iter(pipeline.make_dataset(_config(videos, cache_dir=tmp_path / "cache"))))
    x, y = next(iter(pipeline.make_dataset(config, "train")))
    np.testing.assert_allclose(y["flow"].numpy(), 2 * plain[1]["flow"].numpy(), rtol=1e-5)
    np.testing.assert_array_equal(x["image"].numpy(), plain[0]["image"].numpy())
    mask = x["sparse"][..., 2].numpy() > 0
    np.testing.assert_allclose(x["sparse"].numpy()[..., :2][mask], y["flow"].numpy()[mask],
                               atol=1e-5)


def test_a_validation_video_the_training_data_also_holds_is_found(videos, tmp_path):
    """train.py said its validation clips were not trained on whatever they were: a video in
    both, directly or through the shards ingested from it, is now named."""
    ingest.ingest([videos[1]], str(tmp_path / "shards"), {"gaps": (1,), "dis_preset": "fast"},
                  progress=False)
    config = _config([videos[0]], val=[videos[1]])
    assert pipeline.videos_in_both(config) == []
    config.data.train = [videos[0], str(tmp_path / "shards")]
    held_out = os.path.realpath(videos[1])
    assert pipeline.videos_in_both(config) == [held_out]
    config.data.train = [os.path.dirname(videos[1])]  # the folder holding it
    assert pipeline.videos_in_both(config) == [held_out]


def test_a_list_sample_that_fails_with_on_error_raise_is_a_data_error(tmp_path, rng):
    """Raised inside the loader, it ended training with TensorFlow's traceback, unsaved."""
    import cv2

    cv2.imwrite(str(tmp_path / "good.png"), rng.integers(0, 255, (40, 40, 3), np.uint8))
    (tmp_path / "broken.png").write_bytes(b"garbage")
    formats.write_flo(tmp_path / "a.flo", np.zeros((40, 40, 2), np.float32))
    (tmp_path / "val.txt").write_text("good.png good.png a.flo\nbroken.png good.png a.flo\n")
    config = _config([str(tmp_path / "val.txt")], val=[str(tmp_path / "val.txt")], batch=1)
    with pytest.raises(pipeline.DataError, match=r"config.data.val: .*val.txt:2: .*broken.png.*"
                                                 r" With data.on_error=raise the first unreadable"):
        list(pipeline.batches(pipeline.make_dataset(config, "val")))
