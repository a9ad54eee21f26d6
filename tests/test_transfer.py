"""Transfer learning: the VOC reader, IoU scoring, encoder loading and the side-by-side run."""
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from cmp_tf import losses
from cmp_tf import models
from cmp_tf import transfer
from cmp_tf.data import formats
from cmp_tf.data import synthetic
from cmp_tf.data import voc
from cmp_tf.evaluation import segmentation as scores
from cmp_tf.models import layers
from cmp_tf.models import segmentation
from tests.helpers import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

IGNORE = voc.IGNORE_LABEL


def _write_voc(folder, labels, split="train"):
    """A VOC-format folder with one random image per label map; returns the folder."""
    rng = np.random.default_rng(0)
    for sub in (voc.IMAGE_DIR, voc.LABEL_DIR, voc.LIST_DIR):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    ids = []
    for i, label in enumerate(labels):
        name = f"im{i}"
        image = rng.integers(0, 255, (*label.shape, 3), dtype=np.uint8)
        tf.io.write_file(os.path.join(folder, voc.IMAGE_DIR, f"{name}.jpg"),
                         tf.io.encode_jpeg(image))
        voc.write_label(os.path.join(folder, voc.LABEL_DIR, f"{name}.png"), label)
        ids.append(name)
    with open(os.path.join(folder, voc.LIST_DIR, f"{split}.txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    return str(folder)


def _config(arg="runlocal"):
    return load_config("segmentation", arg)


def test_palette_labels_round_trip_as_indices_not_colours(tmp_path):
    label = np.array([[0, 1, 2], [20, IGNORE, 3]], np.uint8)
    path = tmp_path / "l.png"
    voc.write_label(path, label)
    np.testing.assert_array_equal(voc.read_label(path), label)
    # The palette holds VOC's colours: class 1 is dark red, 255 the void colour.
    np.testing.assert_array_equal(voc.colorize(label)[0, 1], (128, 0, 0))
    np.testing.assert_array_equal(voc.colorize(label)[1, 1], (224, 224, 192))
    with pytest.raises(ValueError, match=r"l\.png holds values \[20\]"):
        voc.read_label(path, num_classes=4)
    rgb = tmp_path / "rgb.png"
    tf.io.write_file(str(rgb), tf.io.encode_png(np.zeros((2, 2, 3), np.uint8)))
    with pytest.raises(ValueError, match=r"rgb\.png has mode RGB"):
        voc.read_label(rgb)


def test_voc_reader_respects_the_ignore_label_in_data_loss_and_scores(tmp_path):
    label = np.zeros((24, 40), np.uint8)
    label[4:12, 8:20] = 2
    label[:, 30:] = IGNORE  # void band
    folder = _write_voc(tmp_path / "voc", [label, label])
    images, labels = next(iter(voc.make_dataset(folder, "train", 3, training=False,
                                                batch_size=2, pad_to=(32, 64))))
    assert images.shape == (2, 32, 64, 3) and labels.dtype == tf.int32
    np.testing.assert_array_equal(labels[0, :24, :40], label)
    assert (labels[:, 24:] == IGNORE).numpy().all() and (labels[:, :, 40:] == IGNORE).numpy().all()

    # Training crops larger than the image are padded with the ignore label and image_pad.
    images, labels = next(iter(voc.make_dataset(folder, "train", 3, training=True, batch_size=2,
                                                crop=(32, 48), image_pad=(10.0, 20.0, 30.0))))
    assert labels.shape == (2, 32, 48)
    counts = np.bincount(labels.numpy().ravel(), minlength=256)
    assert counts[2] == 2 * 8 * 12  # scale 1: the object is cropped whole, never resampled
    assert counts[IGNORE] == 2 * (32 * 48 - 24 * 30)
    # Centred padding: 4 rows on top, 4 columns on the left are padding.
    np.testing.assert_array_equal(images[:, :4].numpy().reshape(-1, 3),
                                  np.tile([10.0, 20.0, 30.0], (2 * 4 * 48, 1)))

    # Loss: logits at ignored pixels, however wrong, change nothing.
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 24, 40, 3)).astype(np.float32)
    target = label[None].astype(np.int32)
    wild = logits.copy()
    wild[0][label == IGNORE] = (1e4, -1e4, 0.0)
    keep = label != IGNORE
    expected = tf.nn.sparse_softmax_cross_entropy_with_logits(
        target[0][keep], logits[0][keep]).numpy().mean()
    np.testing.assert_allclose(losses.segmentation_loss(logits, target), expected, rtol=1e-6)
    np.testing.assert_allclose(losses.segmentation_loss(wild, target), expected, rtol=1e-6)
    # Scores: ignored pixels are not counted whatever is predicted there.
    prediction = np.where(label == IGNORE, 1, label)
    confusion = scores.confusion_matrix(label, prediction, 3)
    assert confusion.sum() == keep.sum() and confusion[:, 1].sum() == 0


def test_miou_equals_a_hand_computed_confusion_matrix():
    labels = np.array([[0, 0, 1, 1],
                       [0, 2, 2, IGNORE],
                       [3, 3, 3, IGNORE]])
    predictions = np.array([[0, 1, 1, 1],
                            [0, 2, 0, 3],
                            [3, 3, 2, 0]])
    # rows: truth, columns: prediction; the two ignored pixels are left out.
    hand = np.array([[2, 1, 0, 0],
                     [0, 2, 0, 0],
                     [1, 0, 1, 0],
                     [0, 0, 1, 2]])
    confusion = scores.confusion_matrix(labels, predictions, 5)
    np.testing.assert_array_equal(confusion[:4, :4], hand)
    assert confusion[4].sum() == confusion[:, 4].sum() == 0  # class 4: nowhere
    iou, miou = scores.iou_from_confusion(confusion)
    # IoU = TP / (row + column - TP): 2/(3+3-2), 2/(2+3-2), 1/(2+2-1), 2/(3+2-2).
    expected = [2 / 4, 2 / 3, 1 / 3, 2 / 3]
    np.testing.assert_allclose(iou[:4], expected)
    assert np.isnan(iou[4])  # absent everywhere: left out of the mean
    np.testing.assert_allclose(miou, np.mean(expected))
    # a class no label holds is left out whether or not a model predicts it: two models
    # scored on one set average over the same classes
    predicted = confusion.copy()
    predicted[0, 0] -= 1
    predicted[0, 4] += 1  # one background pixel called class 4
    iou_predicted, miou_predicted = scores.iou_from_confusion(predicted)
    assert np.isnan(iou_predicted[4]) and np.isfinite(iou_predicted[:4]).all()
    np.testing.assert_allclose(miou_predicted, np.mean([1 / 4, 2 / 3, 1 / 3, 2 / 3]))
    with pytest.raises(ValueError, match="labels must be classes 0..2"):
        scores.confusion_matrix(labels, predictions, 3)
    with pytest.raises(ValueError, match="predictions must be classes 0..4"):
        scores.confusion_matrix(labels, np.where(predictions == 3, 7, predictions), 5)
    with pytest.raises(ValueError, match="same shape"):
        scores.confusion_matrix(labels, predictions[:2], 5)
    with pytest.raises(ValueError, match="labels must hold integer class indices; got dtype "
                                         "float64"):
        scores.confusion_matrix(labels + 0.7, predictions, 5)


def test_evaluate_segmentation_scores_a_known_model(rng):
    # The "model" predicts the channel with the largest value: the predictions are known.
    image = keras.Input((None, None, 3), name="image")
    model = keras.Model(image, keras.layers.Identity()(image))
    images = rng.normal(size=(3, 8, 8, 3)).astype(np.float32)
    labels = rng.integers(0, 3, (3, 8, 8)).astype(np.int32)
    labels[:, :2] = IGNORE
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)
    result = scores.evaluate_segmentation(model, ds, np.int64(3))  # NumPy's ints are ints
    expected = scores.confusion_matrix(labels, images.argmax(-1), 3)
    np.testing.assert_array_equal(result["confusion"], expected)
    assert result["pixels"] == 3 * 6 * 8
    np.testing.assert_allclose(result["miou"], scores.iou_from_confusion(expected)[1])


def test_read_split_names_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path / 'nowhere'} does not exist"):
        voc.read_split(tmp_path / "nowhere", "train")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"{empty}.*is not a VOC-format folder"):
        voc.read_split(empty, "train")
    folder = _write_voc(tmp_path / "voc", [np.zeros((8, 8), np.uint8)])
    with open(os.path.join(folder, voc.LIST_DIR, "val.txt"), "w") as f:
        f.write("\n\n")
    with pytest.raises(ValueError, match=r"val\.txt lists no images"):
        voc.read_split(folder, "val")
    with open(os.path.join(folder, voc.LIST_DIR, "val.txt"), "w") as f:
        f.write("im0\nim9\n")
    with pytest.raises(ValueError, match=r"Image .*im9\.jpg does not exist\.$"):
        voc.read_split(folder, "val")
    os.replace(os.path.join(folder, voc.IMAGE_DIR, "im0.jpg"),
               os.path.join(folder, voc.IMAGE_DIR, "im0.png"))
    with pytest.raises(ValueError, match=r"im0\.jpg does not exist: im0\.png is there, but a "
                                         r"VOC-format folder's images are JPEGImages/<id>\.jpg"):
        voc.read_split(folder, "train")
    os.replace(os.path.join(folder, voc.IMAGE_DIR, "im0.png"),
               os.path.join(folder, voc.IMAGE_DIR, "im0.jpg"))
    voc.write_label(os.path.join(folder, voc.LABEL_DIR, "im0.png"), np.zeros((8, 9), np.uint8))
    with pytest.raises(ValueError, match=r"im0\.png is 8x9 but its image .*im0\.jpg is 8x8"):
        voc.read_split(folder, "train")


def test_bad_labels_and_cut_images_are_named_before_the_pipeline_runs(tmp_path):
    """Found inside tf.data they were a TensorFlow traceback, and in a one-pass split a
    process that never exited."""
    label = np.zeros((16, 16), np.uint8)
    bad = label.copy()
    bad[3, 3] = 9
    folder = _write_voc(tmp_path / "voc", [label, bad])
    for training in (True, False):
        with pytest.raises(ValueError, match=r"im1\.png holds values \[9\] that are neither "
                                             r"classes 0\.\.3"):
            voc.make_dataset(folder, "train", 4, training=training, batch_size=1,
                             crop=(16, 16))
    assert voc.make_dataset(folder, "train", 10, training=False, batch_size=1) is not None
    jpeg = os.path.join(folder, voc.IMAGE_DIR, "im0.jpg")
    data = open(jpeg, "rb").read()
    open(jpeg, "wb").write(data[:-40])  # its header whole: only the pixels are cut
    with pytest.raises(ValueError, match=r"Image .*im0\.jpg is a JPEG cut short"):
        voc.make_dataset(folder, "train", 10, training=False, batch_size=1)
    # Damaged mid-file with its end marker whole: OpenCV and PIL decode it, TensorFlow's
    # decoder stops, which inside tf.data ended a run in a traceback naming no file.
    data = bytearray(data)
    middle = (data.find(b"\xff\xda") + len(data)) // 2  # in the scan, after the headers
    data[middle:middle + 40] = b"\xff" * 40
    open(jpeg, "wb").write(bytes(data))
    assert formats.read_image(jpeg).shape == (16, 16, 3)
    for training in (True, False):
        with pytest.raises(ValueError, match=r"Image .*im0\.jpg does not decode as a JPEG"):
            voc.make_dataset(folder, "train", 10, training=training, batch_size=1,
                             crop=(16, 16))


def test_synthetic_generator_writes_a_readable_voc_set_and_moving_videos(tmp_path):
    kwargs = dict(num_train=4, num_val=2, num_videos=2, frames=4, size=(64, 64), seed=3)
    manifest = synthetic.write_synthetic_voc(tmp_path / "a", **kwargs)
    assert manifest["classes"] == list(synthetic.SYNTHETIC_CLASSES)
    ids, _, labels, sizes = voc.read_split(tmp_path / "a", "train")
    assert len(ids) == 4 and all(54 <= min(s) and max(s) <= 64 for s in sizes)
    values = np.concatenate([voc.read_label(p, 4).ravel() for p in labels])
    assert set(np.unique(values)) <= {0, 1, 2, 3, IGNORE}
    assert (values == IGNORE).any() and (values > 0).mean() > 0.05  # objects with void bands
    assert len(voc.read_split(tmp_path / "a", "val")[0]) == 2
    videos = formats.list_videos(tmp_path / "a" / "videos")
    assert len(videos) == 2
    frames, _ = formats.read_video(videos[0])
    assert len(frames) == 4 and frames[0].shape == (64, 64, 3)
    assert np.abs(frames[0].astype(float) - frames[-1]).mean() > 5  # the scene moves
    # Deterministic: the same seed writes the same labels.
    synthetic.write_synthetic_voc(tmp_path / "b", **kwargs)
    for name in ("train_00000.png", "val_00001.png"):
        np.testing.assert_array_equal(voc.read_label(tmp_path / "a" / voc.LABEL_DIR / name),
                                      voc.read_label(tmp_path / "b" / voc.LABEL_DIR / name))
    assert synthetic.ensure_synthetic_voc(tmp_path / "a", **kwargs) == manifest  # reused
    with pytest.raises(ValueError, match="other arguments"):
        synthetic.ensure_synthetic_voc(tmp_path / "a", **{**kwargs, "seed": 4})
    with pytest.raises(ValueError, match="not a generated synthetic set"):
        synthetic.ensure_synthetic_voc(tmp_path / "a" / "videos")


def test_a_synthetic_set_cut_short_is_written_again(tmp_path, monkeypatch):
    """A killed `python -m cmp_tf.data.synthetic` left a folder the next run refused as "not a
    generated set"; it is now written again, and files of the cut-short attempt go."""
    kwargs = dict(num_train=3, num_val=1, num_videos=3, frames=3, size=(48, 48))
    write_video = synthetic.write_video

    def killed_after_one(path, frames, **options):
        if path.endswith("scene_0001.avi"):
            raise KeyboardInterrupt
        return write_video(path, frames, **options)

    monkeypatch.setattr(synthetic, "write_video", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        synthetic.write_synthetic_voc(tmp_path / "set", **kwargs)
    monkeypatch.setattr(synthetic, "write_video", write_video)
    assert (tmp_path / "set" / synthetic.SYNTHETIC_UNFINISHED).is_file()
    manifest = synthetic.ensure_synthetic_voc(tmp_path / "set", **{**kwargs, "num_videos": 0,
                                                                     "num_train": 2})
    assert manifest["num_videos"] == 0 and manifest["num_train"] == 2
    names = sorted(os.listdir(tmp_path / "set"))
    assert synthetic.SYNTHETIC_UNFINISHED not in names and synthetic.SYNTHETIC_MANIFEST in names
    assert not os.listdir(tmp_path / "set" / "videos")
    assert sorted(os.listdir(tmp_path / "set" / "JPEGImages")) == [
        "train_00000.jpg", "train_00001.jpg", "val_00000.jpg"]
    # evaluate.py --task=segmentation takes such a folder as a generated set (and rewrites it)
    with pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(synthetic, "write_video", killed_after_one)
        synthetic.write_synthetic_voc(tmp_path / "cut", **kwargs)
    code = ("import types, sys; from absl import flags; import evaluate; "
            "flags.FLAGS(['evaluate', '--data=' + sys.argv[1]]); "
            "print(evaluate._segmentation_data(types.SimpleNamespace("
            "data=types.SimpleNamespace(synthetic=True))))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "cut")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == str(tmp_path / "cut"), done.stderr


@pytest.fixture(scope="module")
def saved_encoder(tmp_path_factory):
    """encoder.keras of the default recipe's encoder with weights no fresh build has."""
    keras.utils.set_random_seed(1)
    encoder = models.build_encoder(_config())
    rng = np.random.default_rng(1)
    encoder.set_weights([w * rng.uniform(0.5, 1.5, w.shape).astype(np.float32)
                         for w in encoder.get_weights()])  # signs kept: variances stay > 0
    path = str(tmp_path_factory.mktemp("run") / "encoder.keras")
    layers.plain_keras_copy(encoder).save(path)
    return path, encoder


def test_build_and_load_copies_the_encoder_weights_exactly(saved_encoder):
    path, encoder = saved_encoder
    config = _config()
    model = segmentation.build_segmentation_model(config, 4)
    assert model.output_shape == (None, None, None, 4)
    assert model(np.zeros((1, 64, 96, 3), np.float32)).shape == (1, 64, 96, 4)
    assert any(layer.name == "head_skip" for layer in model.layers)  # DeepLabv3+ on MobileNet
    head_before = [w.numpy().copy() for w in model.get_layer("head_classifier").weights]
    info = transfer.load_encoder_weights(model, os.path.dirname(path))  # the run directory
    assert info["path"] == path and info["weights"] == len(encoder.weights)
    loaded = model.get_layer(segmentation.ENCODER).weights
    assert len(loaded) == len(encoder.weights)
    for want, got in zip(encoder.weights, loaded):
        assert want.path == got.path
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    for before, after in zip(head_before, model.get_layer("head_classifier").weights):
        np.testing.assert_array_equal(before, after.numpy())  # the head is left alone
    segmentation.set_encoder_frozen(model, True)
    frozen = {id(v) for v in model.get_layer(segmentation.ENCODER).weights}
    assert model.trainable_variables and not frozen & {id(v) for v in model.trainable_variables}


def test_a_run_directory_with_only_model_keras_loads_its_encoder(tmp_path):
    keras.utils.set_random_seed(5)
    cmp = models.build_cmp(load_config("cpu_bins", "runlocal"))
    cmp.save(tmp_path / "model.keras")
    keras.utils.set_random_seed(0)
    model = segmentation.build_segmentation_model(_config(), 4)
    info = transfer.load_encoder_weights(model, tmp_path)
    assert info["path"] == str(tmp_path / "model.keras")
    for want, got in zip(cmp.get_layer(segmentation.ENCODER).weights,
                         model.get_layer(segmentation.ENCODER).weights):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_a_mismatching_or_missing_checkpoint_is_a_clear_error(saved_encoder, tmp_path):
    path, _ = saved_encoder
    config = _config()
    config.model.options.mobilenet_v3.width = 64  # another encoder than the checkpoint's
    model = segmentation.build_segmentation_model(config, 4)
    with pytest.raises(ValueError, match=r"(?s)encoder\.keras does not match.*conv_out: shapes"):
        transfer.load_encoder_weights(model, path)
    config.model.image_encoder = "alexnet_fcn_32x"
    with pytest.raises(ValueError, match="missing from the checkpoint"):
        transfer.load_encoder_weights(segmentation.build_segmentation_model(config, 4), path)
    with pytest.raises(ValueError, match=f"Checkpoint {tmp_path / 'nope.keras'} does not exist"):
        transfer.load_encoder_weights(model, tmp_path / "nope.keras")
    with pytest.raises(ValueError, match=f"{tmp_path} is a directory without encoder.keras"):
        transfer.load_encoder_weights(model, tmp_path)
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"bad.keras is not a .keras file \(not a zip archive: "
                                         r"9 bytes\)"):
        transfer.load_encoder_weights(model, bad)
    segmentation_file = tmp_path / "segmentation.keras"
    model.save(segmentation_file)  # its encoder learned segmentation, not motion
    with pytest.raises(ValueError, match=r"holds a 'segmentation_\w+' model whose encoder was "
                                         r"not trained by CMP"):
        transfer.load_encoder_weights(model, segmentation_file)


def test_heads_follow_the_encoder(rng):
    config = _config()
    config.model.image_encoder = "alexnet_fcn_32x"
    assert segmentation.head_name(config) == "fcn"
    config.model.image_encoder = "resnet50"
    assert segmentation.head_name(config) == "aspp"
    config.head.name = "fcnn"
    with pytest.raises(ValueError, match="config.head.name='fcnn' is unknown"):
        segmentation.head_name(config)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        segmentation.build_segmentation_model(_config(), 1)


def test_compare_refuses_an_empty_data_folder_and_a_bad_checkpoint(saved_encoder, tmp_path):
    config = _config()
    config.data.synthetic = False
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"{empty}.*is not a VOC-format folder"):
        transfer.compare_initializations(config, saved_encoder[0], empty, progress=False)
    with pytest.raises(ValueError, match=f"Checkpoint {tmp_path / 'run'} does not exist"):
        transfer.compare_initializations(config, tmp_path / "run", empty, progress=False)


def test_labels_that_hold_no_class_are_refused_before_training(saved_encoder, tmp_path,
                                                               monkeypatch, caplog):
    """Masks saved as 0 / 255 mark their objects as ignored: the object class is nowhere, and
    a split all 255 has nothing to learn or score; both stop before a step is trained."""
    monkeypatch.setattr(transfer, "train_segmentation",
                        lambda *a, **k: pytest.fail("trained on broken labels"))
    config = _config()
    config.data.synthetic, config.data.num_classes = False, 2
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = IGNORE
    folder = tmp_path / "zero_255"
    for split in ("train", "val"):
        _write_voc(folder, [mask, mask], split)
    with pytest.raises(ValueError, match=r"no label of 'train' or 'val' in .*zero_255 holds "
                                         r"class 1 \(class 1\): is num_classes right\? A mask "
                                         r"saved as 0 and 255"):
        transfer.compare_initializations(config, saved_encoder[0], str(folder), progress=False)
    folder = tmp_path / "ignored_val"
    objects = np.where(mask == IGNORE, 1, 0).astype(np.uint8)
    _write_voc(folder, [objects, objects], "train")
    with open(os.path.join(folder, voc.LIST_DIR, "val.txt"), "w") as f:
        f.write("im2\n")
    voc.write_label(os.path.join(folder, voc.LABEL_DIR, "im2.png"), np.full((16, 16), IGNORE,
                                                                            np.uint8))
    tf.io.write_file(os.path.join(folder, voc.IMAGE_DIR, "im2.jpg"),
                     tf.io.encode_jpeg(np.zeros((16, 16, 3), np.uint8)))
    with pytest.raises(ValueError, match=r"val.txt: none of its 1 labels holds a labelled "
                                         r"pixel \(all 255, the ignore label\)"):
        transfer.compare_initializations(config, saved_encoder[0], str(folder), progress=False)
    voc.write_label(os.path.join(folder, voc.LABEL_DIR, "im2.png"), np.zeros((16, 16), np.uint8))
    counts = transfer.check_classes(config, str(folder), ["background", "object"])
    assert counts["val"].tolist() == [256, 0]
    assert "holds no pixel of class 1 (object): mIoU leaves it out" in caplog.text


@pytest.mark.slow
def test_compare_initializations_end_to_end(saved_encoder, tmp_path):
    config = _config()  # runlocal: 5 steps, 64^2 crops
    config.data.dir = str(tmp_path / "synthetic")
    synthetic.write_synthetic_voc(config.data.dir, num_train=8, num_val=4, num_videos=0,
                                  size=(64, 64))
    results = transfer.compare_initializations(config, saved_encoder[0], workdir=tmp_path / "out",
                                               progress=False)
    for init in transfer.INITS:
        assert 0 <= results[init]["miou"] <= 1 and len(results[init]["per_class_iou"]) == 4
        assert results[init]["steps"] == 5 and np.isfinite(results[init]["final_loss"])
    assert results["val_images"] == 4 and results["classes"][1] == "ellipse"
    # Only the encoder's start differs: the runs cannot come out identical.
    assert results["random"]["confusion"] != results["cmp"]["confusion"]
    table = transfer.comparison_table(results)
    assert "mIoU" in table and "ellipse" in table
    assert f"{100 * results['cmp']['miou']:6.1f}" in table
    assert os.path.isfile(tmp_path / "out" / "comparison.json")
    assert os.path.isfile(tmp_path / "out" / "comparison.png")
    assert not os.path.exists(tmp_path / "out" / "checkpoints")  # removed once finished


class _Killed(Exception):
    pass


@pytest.mark.slow
def test_a_killed_segmentation_training_resumes_exactly(tmp_path, monkeypatch, capsys):
    config = _config()  # runlocal: 64^2 crops, batch 2
    config.train.update(steps=6, log_every=6, checkpoint_every=3)
    config.data.dir = str(tmp_path / "synthetic")
    synthetic.write_synthetic_voc(config.data.dir, num_train=8, num_val=4, num_videos=0,
                                  size=(64, 64))

    def train(folder=None, stamp="a"):
        keras.utils.set_random_seed(3)
        model = segmentation.build_segmentation_model(config, 4)
        fit = transfer.train_segmentation(model, config, progress=True, checkpoint_dir=folder,
                                          stamp=stamp)
        return model.get_weights(), fit

    expected, expected_fit = train()
    real_save = transfer._TrainingState.save

    def save_then_die(self, current, recent, seconds):
        real_save(self, current, recent, seconds)
        if current == 3:
            raise _Killed  # as a kill after step 3's save (steps 4 and on are lost)

    monkeypatch.setattr(transfer._TrainingState, "save", save_then_die)
    folder = str(tmp_path / "checkpoints")
    with pytest.raises(_Killed):
        train(folder)
    monkeypatch.setattr(transfer._TrainingState, "save", real_save)
    resumed, fit = train(folder)
    assert "resuming from" in capsys.readouterr().out
    for got, want in zip(resumed, expected):
        np.testing.assert_array_equal(got, want)  # the same batches, dropout and updates
    assert fit["final_loss"] == expected_fit["final_loss"]  # losses before the kill kept
    # Checkpoints made from other inputs are not resumed: the run starts over.
    other, _ = train(folder, stamp="b")
    assert "made from other inputs" in capsys.readouterr().out
    for got, want in zip(other, expected):
        np.testing.assert_array_equal(got, want)


def _fake_result(seed, random_miou, cmp_miou):
    return {"seed": seed, "steps": 5, "val_images": 4, "data_dir": "d", "checkpoint": "c",
            "random": {"miou": random_miou}, "cmp": {"miou": cmp_miou}}


def test_seed_summary_pairs_each_seed_and_reports_mean_and_spread():
    runs = {"fine_tuned": [_fake_result(0, 0.60, 0.65), _fake_result(1, 0.50, 0.48),
                           _fake_result(2, 0.70, 0.74)],
            "frozen": [_fake_result(0, 0.40, 0.44), _fake_result(1, 0.42, 0.47),
                       _fake_result(2, 0.38, 0.45)]}
    summary = transfer.seed_summary(runs)
    tuned = summary["modes"]["fine_tuned"]
    assert summary["seeds"] == [0, 1, 2]
    np.testing.assert_allclose(tuned["random"]["mean"], 0.60)
    np.testing.assert_allclose(tuned["random"]["std"], 0.10)  # sample standard deviation
    np.testing.assert_allclose(tuned["gain"]["miou"], [0.05, -0.02, 0.04], atol=1e-12)
    np.testing.assert_allclose(tuned["gain"]["mean"], 0.07 / 3)
    assert tuned["cmp_better_at"] == 2 and summary["modes"]["frozen"]["cmp_better_at"] == 3
    table = transfer.seeds_table(summary)
    assert "fine-tuned" in table and "frozen" in table and "2 of 3" in table
    assert " 60.0 +- 10.0" in table and "50.0 / 48.0" in table and "+5.3 +-" in table
    with pytest.raises(ValueError, match="runs\\['frozen'\\] is empty"):
        transfer.seed_summary({"frozen": []})


@pytest.mark.parametrize("seeds, modes, message", [
    ([], ["frozen"], "seeds must be distinct integers"),
    ([0, 0], ["frozen"], "seeds must be distinct integers"),
    (["0"], ["frozen"], "seeds must be distinct integers"),
    ([0], ["freeze"], "modes must be distinct names from \\['fine_tuned', 'frozen'\\]"),
    ([0], [], "modes must be distinct names"),
])
def test_compare_over_seeds_refuses_bad_seeds_and_modes(seeds, modes, message):
    with pytest.raises(ValueError, match=message):
        transfer.compare_over_seeds(_config(), "unused", seeds, modes, progress=False)


@pytest.mark.slow
def test_compare_over_seeds_end_to_end_and_resumes(saved_encoder, tmp_path, monkeypatch,
                                                   capsys):
    config = _config()  # runlocal: 5 steps, 64^2 crops
    config.data.dir = str(tmp_path / "synthetic")
    synthetic.write_synthetic_voc(config.data.dir, num_train=8, num_val=4, num_videos=0,
                                  size=(64, 64))
    out = tmp_path / "out"
    summary = transfer.compare_over_seeds(config, saved_encoder[0], [0, 1], ["frozen"],
                                          workdir=out, progress=False)
    row = summary["modes"]["frozen"]
    assert summary["seeds"] == [0, 1] and len(row["cmp"]["miou"]) == 2
    assert row["random"]["miou"][0] != row["random"]["miou"][1]  # the seed reaches the run
    for seed in (0, 1):
        with open(out / f"frozen_seed{seed}" / "comparison.json") as f:
            done = json.load(f)
        assert done["seed"] == seed and done["freeze_encoder"] is True
    assert os.path.isfile(out / "seeds.json") and os.path.isfile(out / "seeds.png")

    # A second sweep reuses finished runs; a changed recipe or another seed is trained anew.
    trained = []
    real = transfer.compare_initializations
    monkeypatch.setattr(transfer, "compare_initializations",
                        lambda c, *a, **k: trained.append(c.seed) or real(c, *a, **k))
    capsys.readouterr()
    again = transfer.compare_over_seeds(config, saved_encoder[0], [0, 1, 2], ["frozen"],
                                        workdir=out, progress=True)
    said = capsys.readouterr().out  # where a sweep of runs is, each with its own bars
    assert "frozen, seed 0: run 1 of 3" in said and "frozen, seed 2: run 3 of 3" in said
    assert f"frozen, seed 1: reusing {out}/frozen_seed1/comparison.json" in said, said
    assert trained == [2] and again["modes"]["frozen"]["random"]["miou"][:2] == \
        row["random"]["miou"]
    config.train.steps = 4
    transfer.compare_over_seeds(config, saved_encoder[0], [0], ["frozen"], workdir=out,
                                progress=False)
    assert trained == [2, 0]
    # The same recipe on other data (--data): trained anew, not the first folder's scores.
    shutil.copytree(config.data.dir, tmp_path / "copy")
    transfer.compare_over_seeds(config, saved_encoder[0], [0], ["frozen"],
                                data_dir=str(tmp_path / "copy"), workdir=out, progress=False)
    assert trained == [2, 0, 0]
    with open(out / "frozen_seed0" / "comparison.json") as f:
        assert json.load(f)["data_dir"] == str(tmp_path / "copy")
    # A label mended in place: the folder and its lists unchanged, the run trained anew.
    label = sorted((tmp_path / "copy" / voc.LABEL_DIR).iterdir())[0]
    voc.write_label(label, voc.read_label(label))
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))
    transfer.compare_over_seeds(config, saved_encoder[0], [0], ["frozen"],
                                data_dir=str(tmp_path / "copy"), workdir=out, progress=False)
    assert trained == [2, 0, 0, 0]


def test_the_generated_set_is_a_cache_under_cmp_tf_cache_home(tmp_path, monkeypatch):
    """A relative folder of the generated set goes where every cache goes; a folder of your
    own, or one given, is taken as written."""
    import ml_collections

    from cmp_tf import data as data_lib
    from cmp_tf import transfer

    config = ml_collections.ConfigDict({"data": {"dir": "data/cache/synthetic_voc",
                                                 "synthetic": True}})
    monkeypatch.delenv(data_lib.CACHE_HOME_ENV, raising=False)
    assert transfer.data_folder(config) == "data/cache/synthetic_voc"
    monkeypatch.setenv(data_lib.CACHE_HOME_ENV, str(tmp_path))
    assert transfer.data_folder(config) == str(tmp_path / "data/cache/synthetic_voc")
    assert transfer.data_folder(config, "elsewhere") == "elsewhere"
    config.data.synthetic = False
    assert transfer.data_folder(config) == "data/cache/synthetic_voc"
