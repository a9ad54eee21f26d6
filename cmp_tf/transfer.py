"""Transfer learning: a CMP-trained image encoder inside a segmentation model.

What the paper measures (Table 1): the encoder CMP trained on unlabelled video, fine-tuned for
PASCAL VOC segmentation, against the same network from random initialization at the same
budget. Heads follow the paper's protocols: an FCN classifier on AlexNet, a DeepLab-style
ASPP head on ResNet-50 and the mobile encoder (DeepLabv3+ when the encoder has stride-4
skips). Logits are upsampled (align corners) to the image; 255 labels are ignored in the loss
and the scores.

    results = compare_initializations(config, "runs/cmp_synthetic")
    print(comparison_table(results))
"""
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from cmp_tf import models
from cmp_tf import rundir
from cmp_tf import training
from cmp_tf.data import synthetic
from cmp_tf.data import voc
from cmp_tf.models import layers as L

ENCODER = "image_encoder"  # the encoder's layer name in CMP models and segmentation models
HEADS = ("fcn", "aspp")
# AlexNet's output stride 32 and no skips: the paper transfers it with FCN-32s.
_AUTO_HEADS = {"alexnet_fcn_32x": "fcn"}
_AUTO_DEFAULT_HEAD = "aspp"
INITS = ("random", "cmp")  # the two sides of the comparison
_PROBE = 1024  # square input side whose symbolic output shapes reveal the encoder's strides
_PANEL_IMAGES = 4  # validation images in the comparison panel
_MAX_LISTED = 20  # mismatching layers listed in an error


# --- Model -----------------------------------------------------------------------------------

def head_name(config):
    """The head config.head.name picks; "auto": FCN for AlexNet, ASPP for the others."""
    name = config.head.name
    if name == "auto":
        return _AUTO_HEADS.get(config.model.image_encoder, _AUTO_DEFAULT_HEAD)
    if name not in HEADS:
        raise ValueError(f"config.head.name={name!r} is unknown; known: auto, {', '.join(HEADS)}.")
    return name


def encoder_strides(encoder):
    """{output name: stride} of an image encoder (features, and skip2 / skip4 if it has them)."""
    shapes = encoder.compute_output_shape((1, _PROBE, _PROBE, 3))
    return {key: _PROBE // shape[1] for key, shape in shapes.items()}


def fcn_head(features, num_classes, *, width, dropout, gain, name="head"):
    """FCN's classifier (as torchvision's FCNHead): 3x3 conv, BN, ReLU, dropout, 1x1 scores."""
    x = L.conv_bn_relu(features, width, 3, use_bias=False, name=f"{name}_conv", gain=gain)
    x = keras.layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return L.conv(x, num_classes, 1, name=f"{name}_classifier", gain=gain)


def aspp_head(features, num_classes, *, width, rates, dropout, gain, skip=None, skip_width=0,
              name="head"):
    """DeepLabv3's ASPP (a 1x1 branch, atrous 3x3 branches at `rates`, image pooling), then
    DeepLabv3+'s refinement with the stride-4 `skip` features if given."""
    branches = [L.conv_bn_relu(features, width, 1, use_bias=False, name=f"{name}_aspp0",
                               gain=gain)]
    for i, rate in enumerate(rates, start=1):
        branches.append(L.conv_bn_relu(features, width, 3, dilation=rate, use_bias=False,
                                       name=f"{name}_aspp{i}", gain=gain))
    pooled = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(features)
    pooled = L.conv_bn_relu(pooled, width, 1, use_bias=False, name=f"{name}_pool_conv",
                            gain=gain)
    branches.append(L.ResizeLike(name=f"{name}_pool_upsample")([pooled, features]))
    x = keras.layers.Concatenate(name=f"{name}_aspp_concat")(branches)
    x = L.conv_bn_relu(x, width, 1, use_bias=False, name=f"{name}_project", gain=gain)
    x = keras.layers.Dropout(dropout, name=f"{name}_dropout")(x)
    if skip is not None:  # DeepLabv3+: boundaries from early, high-resolution features
        low = L.conv_bn_relu(skip, skip_width, 1, use_bias=False, name=f"{name}_skip",
                             gain=gain)
        x = L.ResizeLike(name=f"{name}_upsample")([x, low])  # [B, H/4, W/4, width]
        x = keras.layers.Concatenate(name=f"{name}_skip_concat")([x, low])
    x = L.conv_bn_relu(x, width, 3, use_bias=False, name=f"{name}_conv", gain=gain)
    return L.conv(x, num_classes, 1, name=f"{name}_classifier", gain=gain)


def _check_head_config(head):
    if head.width < 1:
        raise ValueError(f"config.head.width must be positive; got {head.width}.")
    if not 0 <= head.dropout < 1:
        raise ValueError(f"config.head.dropout must be in [0, 1); got {head.dropout}.")
    if head.skip_width < 0:
        raise ValueError(f"config.head.skip_width must be >= 0 (0: no skip); got "
                         f"{head.skip_width}.")
    if not head.rates_px or min(head.rates_px) <= 0:
        raise ValueError(f"config.head.rates_px must be positive pixel rates; got "
                         f"{tuple(head.rates_px)}.")


def build_segmentation_model(config, num_classes):
    """The recipe's image encoder (`models.build_encoder`) + the head config.head picks.

    Args:
        config: a segmentation config (configs/segmentation.py): model.* as the CMP recipe
            whose encoder is transferred, head.*.
        num_classes: classes including background (VOC: 21).
    Returns:
        keras.Model: "image" [B, H, W, 3] RGB 0..255 -> "logits" [B, H, W, num_classes]
        float32, for H, W multiples of the encoder's stride. The encoder is the layer
        `image_encoder`, so a CMP checkpoint's weights load onto it by name.
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (background and one class); got "
                         f"{num_classes!r}.")
    head = config.head
    _check_head_config(head)
    name = head_name(config)
    encoder = models.build_encoder(config)
    if encoder.name != ENCODER:
        raise ValueError(f"The image encoder must be named {ENCODER!r} so checkpoints map onto "
                         f"it; config.model.options names it {encoder.name!r}.")
    strides = encoder_strides(encoder)
    image = keras.Input((None, None, 3), name="image")
    encoded = encoder(image)
    if name == "fcn":
        logits = fcn_head(encoded["features"], num_classes, width=head.width,
                          dropout=head.dropout, gain=head.init_gain)
    else:
        rates = [max(1, round(px / strides["features"])) for px in head.rates_px]
        use_skip = head.skip_width > 0 and "skip4" in encoded
        logits = aspp_head(encoded["features"], num_classes, width=head.width, rates=rates,
                           dropout=head.dropout, gain=head.init_gain,
                           skip=encoded["skip4"] if use_skip else None,
                           skip_width=head.skip_width)
    logits = L.ResizeLike(name="upsample_logits")([logits, image])  # [B, H, W, classes]
    logits = keras.layers.Identity(name="logits", dtype="float32")(logits)
    return keras.Model(image, logits, name=f"segmentation_{name}")


def set_encoder_frozen(model, frozen):
    """Freezes the encoder (its BatchNorm then uses its stored statistics) or unfreezes it."""
    if not isinstance(frozen, bool):
        raise ValueError(f"config.transfer.freeze_encoder must be True or False; got {frozen!r}.")
    model.get_layer(ENCODER).trainable = not frozen


# --- Checkpoints -----------------------------------------------------------------------------

def load_encoder(checkpoint):
    """The image encoder saved in `checkpoint` (see rundir.encoder_file) and the file it came from.

    encoder.keras loads with stock Keras; model.keras (the whole CMP model) needs cmp_tf's
    layers, registered by importing cmp_tf.models.
    """
    path = rundir.encoder_file(checkpoint)
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # any failure to load is the file's problem
        raise ValueError(f"Checkpoint {path} could not be loaded as a Keras model: "
                         f"{type(error).__name__}: {error}") from error
    if ENCODER in {layer.name for layer in model.layers}:
        return model.get_layer(ENCODER), path
    if model.name == ENCODER or "features" in getattr(model, "output_names", ()):
        return model, path
    raise ValueError(f"Checkpoint {path} holds neither an image encoder nor a CMP model with a "
                     f"layer {ENCODER!r}; its model is {model.name!r}.")


def _weight_layers(model, prefix=""):
    """{path: layer} of the layers holding weights; nested models (MobileNet's trunk) are
    flattened into paths such as 'mobilenet_v3_small/expanded_conv_project'."""
    found = {}
    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        if isinstance(layer, keras.Model):
            found.update(_weight_layers(layer, f"{path}/"))
        elif layer.weights:
            found[path] = layer
    return found


def load_encoder_weights(seg_model, checkpoint):
    """Copies a CMP checkpoint's encoder weights onto `seg_model`'s encoder, layer by name.

    All or nothing: the encoders must have the same layers with the same weight shapes.

    Args:
        seg_model: a model with an `image_encoder` layer (build_segmentation_model).
        checkpoint: a run directory, a model.keras or an encoder.keras.
    Returns:
        {"path": file loaded, "layers": layers copied, "weights": arrays copied}.
    Raises:
        ValueError naming the checkpoint and listing the layers that are missing on either
        side or differ in shape (e.g. a checkpoint of another recipe's encoder).
    """
    names = {layer.name for layer in seg_model.layers}
    if ENCODER not in names:
        raise ValueError(f"seg_model {seg_model.name!r} has no layer {ENCODER!r} to load into.")
    source, path = load_encoder(checkpoint)
    src, dst = _weight_layers(source), _weight_layers(seg_model.get_layer(ENCODER))
    problems = [f"{k}: missing from the checkpoint" for k in sorted(set(dst) - set(src))]
    problems += [f"{k}: in the checkpoint, not in the model" for k in sorted(set(src) - set(dst))]
    for key in sorted(set(src) & set(dst)):
        have = [tuple(w.shape) for w in src[key].weights]
        want = [tuple(w.shape) for w in dst[key].weights]
        if have != want:
            problems.append(f"{key}: shapes {have} in the checkpoint, {want} in the model")
    if problems:
        more = len(problems) - _MAX_LISTED
        listed = "\n  ".join(problems[:_MAX_LISTED]) + (f"\n  ... and {more} more" if more > 0
                                                         else "")
        raise ValueError(f"Checkpoint {path} does not match the segmentation model's encoder "
                         f"({len(problems)} layers differ; build the model from the recipe the "
                         f"checkpoint was trained with):\n  {listed}")
    copied = 0
    for key, layer in dst.items():
        values = src[key].get_weights()
        layer.set_weights(values)
        copied += len(values)
    return {"path": path, "layers": len(dst), "weights": copied}


def check_checkpoint_recipe(config, checkpoint):
    """Fails early, and clearly, when a run directory's config.json names another encoder."""
    path = os.fspath(checkpoint)
    saved = os.path.join(path if os.path.isdir(path) else os.path.dirname(path), "config.json")
    if not os.path.isfile(saved):
        return
    with open(saved) as f:
        model = json.load(f).get("model", {})
    trained = model.get("image_encoder")
    if trained and trained != config.model.image_encoder:
        raise ValueError(f"Checkpoint {checkpoint} was trained with model.image_encoder="
                         f"{trained!r} but config.model.image_encoder="
                         f"{config.model.image_encoder!r}; pick the recipe it was trained with, "
                         "e.g. --config=configs/segmentation.py:recipe=<recipe>.")


# --- Loss and scores -------------------------------------------------------------------------

def segmentation_loss(logits, labels, ignore_label=voc.IGNORE_LABEL):
    """Softmax cross-entropy averaged over labelled pixels; `ignore_label` pixels add nothing.

    Args:
        logits: [B, H, W, C]; labels: [B, H, W] integer class indices or `ignore_label`.
    """
    labels = tf.cast(labels, tf.int32)
    valid = tf.not_equal(labels, ignore_label)
    per_pixel = tf.nn.sparse_softmax_cross_entropy_with_logits(
        tf.where(valid, labels, 0), tf.cast(logits, tf.float32))
    weight = tf.cast(valid, tf.float32)
    return tf.reduce_sum(per_pixel * weight) / tf.maximum(tf.reduce_sum(weight), 1.0)


def confusion_matrix(labels, predictions, num_classes, ignore_label=voc.IGNORE_LABEL):
    """[C, C] int64 pixel counts, rows = true class, columns = predicted; ignored pixels skipped.

    Raises:
        ValueError on different shapes or values outside 0..num_classes-1 (labels may also be
        `ignore_label`).
    """
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} must have "
                         "the same shape.")
    keep = labels != ignore_label
    truth, guess = labels[keep].astype(np.int64), predictions[keep].astype(np.int64)
    for name, values in (("labels", truth), ("predictions", guess)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} must be classes 0..{num_classes - 1} (or {ignore_label} "
                             f"in labels); got {values.min()}..{values.max()}.")
    return np.bincount(truth * num_classes + guess, minlength=num_classes**2).reshape(
        num_classes, num_classes)


def iou_from_confusion(confusion):
    """Per-class IoU = TP / (TP + FP + FN) and their mean (mIoU, as VOC scores it).

    A class absent from both labels and predictions has no IoU (NaN) and is left out of the
    mean.

    Returns:
        (per-class IoU float64 [C] with NaN for absent classes, mIoU float; NaN if none).
    """
    confusion = np.asarray(confusion, np.float64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square [C, C] matrix; got shape {confusion.shape}.")
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    iou = np.full(len(tp), np.nan)
    np.divide(tp, union, out=iou, where=union > 0)
    return iou, (float(np.nanmean(iou)) if (union > 0).any() else float("nan"))


def predict_classes(model, image):
    """Argmax class map [B, H, W] int32 of a segmentation model on [B, H, W, 3] images."""
    return tf.argmax(model(image, training=False), -1, output_type=tf.int32)


def evaluate_segmentation(model, dataset, num_classes):
    """Scores `model` on batches of (image, label) (255 = ignore) by their confusion matrix.

    Returns:
        {"miou", "per_class_iou" (NaN: class absent from labels and predictions),
         "pixel_accuracy", "pixels" (labelled pixels scored), "images", "confusion" ([C][C]
         lists, rows = true class)}.
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2; got {num_classes!r}.")
    predict = tf.function(lambda image: predict_classes(model, image))
    confusion = np.zeros((num_classes, num_classes), np.int64)
    images = 0
    for image, label in dataset:
        confusion += confusion_matrix(label.numpy(), predict(image).numpy(), num_classes)
        images += int(image.shape[0])
    iou, miou = iou_from_confusion(confusion)
    pixels = int(confusion.sum())
    if not pixels:
        raise ValueError("The evaluation dataset has no labelled (non-ignored) pixels.")
    return {"miou": miou, "per_class_iou": iou.tolist(),
            "pixel_accuracy": float(np.trace(confusion) / pixels), "pixels": pixels,
            "images": images, "confusion": confusion.tolist()}


# --- Data and training -----------------------------------------------------------------------

def _round_up(value, multiple):
    return -(-value // multiple) * multiple


def make_dataset(config, split, data_dir=None, stride=1):
    """config.data's pipeline for "train" (augmented, repeated) or "val" (one pass, padded to
    the largest image rounded up to `stride`, the encoder's)."""
    d = config.data
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val'; got {split!r}.")
    folder = data_dir or d.dir
    crop = tuple(d.crop)
    if len(crop) != 2 or crop[0] % stride or crop[1] % stride or min(crop) < stride:
        raise ValueError(f"config.data.crop={crop} must be two multiples of the encoder's "
                         f"stride {stride}.")
    image_pad = L.IMAGENET_MEAN  # padding is zero after the model's normalization
    if split == "train":
        return voc.make_dataset(folder, d.train_split, d.num_classes, training=True,
                                batch_size=d.batch_size, crop=crop, scale=tuple(d.scale),
                                flip=d.flip, seed=config.seed, shuffle_buffer=d.shuffle_buffer,
                                image_pad=image_pad, max_images=d.max_train_images)
    _, _, _, sizes = voc.read_split(folder, d.val_split)
    if d.max_val_images > 0:
        sizes = sizes[:d.max_val_images]
    largest = np.max(sizes, axis=0)
    pad_to = (_round_up(int(largest[0]), stride), _round_up(int(largest[1]), stride))
    return voc.make_dataset(folder, d.val_split, d.num_classes, training=False,
                            batch_size=d.eval_batch_size, pad_to=pad_to, image_pad=image_pad,
                            max_images=d.max_val_images)


def train_segmentation(model, config, data_dir=None, progress=True, desc="train"):
    """Trains `model` on the train split for config.train.steps with config.optim/schedule.

    SGD or Adam on the recipe schedule (training.make_optimizer), coupled L2 weight decay on
    every trainable weight as in CMP training, one device.

    Returns:
        {"final_loss": mean loss of the last config.train.log_every steps, "steps",
         "seconds"}.
    """
    from tqdm import tqdm

    t = config.train
    if t.steps < 1:
        raise ValueError(f"config.train.steps must be positive; got {t.steps}.")
    if t.log_every < 1:
        raise ValueError(f"config.train.log_every must be positive; got {t.log_every}.")
    stride = encoder_strides(model.get_layer(ENCODER))["features"]
    dataset = make_dataset(config, "train", data_dir, stride)
    optimizer = training.make_optimizer(config)
    variables = model.trainable_variables
    optimizer.build(variables)
    decay = float(config.optim.get("weight_decay", 0.0))

    @tf.function
    def step(image, label):
        with tf.GradientTape() as tape:
            loss = segmentation_loss(model(image, training=True), label)
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        if decay:
            grads = [g + decay * tf.cast(v, g.dtype) for g, v in zip(grads, variables)]
        optimizer.apply(grads, variables)
        return loss

    recent, start = [], time.perf_counter()
    iterator = iter(dataset)
    with tqdm(total=t.steps, desc=desc, unit="step", disable=not progress,
              dynamic_ncols=True) as bar:
        for current in range(1, t.steps + 1):
            loss = float(step(*next(iterator)))
            if not np.isfinite(loss):
                raise FloatingPointError(f"Segmentation loss became {loss} at step {current} "
                                         f"({desc}); lower config.schedule.lr.")
            recent = (recent + [loss])[-t.log_every:]
            bar.update()
            if current % t.log_every == 0:
                bar.set_postfix(loss=f"{np.mean(recent):.3f}")
    return {"final_loss": float(np.mean(recent)), "steps": t.steps,
            "seconds": time.perf_counter() - start}


# --- The paper's comparison ------------------------------------------------------------------

def _class_names(config, data_dir):
    d = config.data
    if d.synthetic:
        manifest = synthetic.ensure_synthetic_voc(data_dir)
        names = manifest["classes"]
        if len(names) != d.num_classes:
            raise ValueError(f"config.data.num_classes={d.num_classes} but the synthetic set in "
                             f"{data_dir} has {len(names)} classes ({', '.join(names)}).")
        return list(names)
    if d.num_classes == len(voc.VOC_CLASSES):
        return list(voc.VOC_CLASSES)
    return [f"class {k}" for k in range(d.num_classes)]


def _json_safe(value):
    """NaN (a class with no pixels) -> None, so the file is strict JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _write_panel(path, images, labels, predictions):
    """Rows of image | label | prediction per initialization, VOC colours; 255 shown as VOC's
    void colour."""
    from PIL import Image

    rows = []
    for i in range(len(images)):
        cells = [np.clip(images[i], 0, 255).astype(np.uint8), voc.colorize(labels[i])]
        cells += [voc.colorize(predictions[init][i]) for init in INITS]
        rows.append(np.concatenate(cells, 1))
    Image.fromarray(np.concatenate(rows, 0)).save(path)


def compare_initializations(config, checkpoint, data_dir=None, workdir=None, progress=True):
    """The paper's comparison: the same segmentation network trained from a random encoder and
    from the CMP encoder of `checkpoint`, at an equal budget, scored on the val split.

    Both runs share everything else: config.seed sets the same head initialization, data order
    and augmentations; only the encoder's starting weights differ. With
    config.data.synthetic the generated set is written into the data folder on first use.

    Args:
        config: a segmentation config (configs/segmentation.py).
        checkpoint: a CMP run directory, model.keras or encoder.keras.
        data_dir: a VOC-format folder; default config.data.dir.
        workdir: if given, comparison.json and comparison.png (image | label | random | CMP
            for a few val images) are written there.
    Returns:
        {"random": scores, "cmp": scores, "classes", "checkpoint", "data_dir", "steps",
        "freeze_encoder", "val_images"}; scores as evaluate_segmentation's plus the training
        summary (final_loss, seconds).
    """
    data_dir = os.fspath(data_dir or config.data.dir)
    if not data_dir:
        raise ValueError("config.data.dir is empty: name a VOC-format folder.")
    rundir.encoder_file(checkpoint)  # fail before any data is written or any step is trained
    check_checkpoint_recipe(config, checkpoint)
    names = _class_names(config, data_dir)
    for split in (config.data.train_split, config.data.val_split):
        voc.read_split(data_dir, split)  # a missing or broken folder fails before building
    num_classes = config.data.num_classes
    built = {}
    for init in INITS:
        keras.utils.set_random_seed(config.seed)  # the same head weights for both
        built[init] = build_segmentation_model(config, num_classes)
    loaded = load_encoder_weights(built["cmp"], checkpoint)
    stride = encoder_strides(built["cmp"].get_layer(ENCODER))["features"]
    val = make_dataset(config, "val", data_dir, stride)
    panel_images, panel_labels = next(iter(val.unbatch().batch(_PANEL_IMAGES)))
    results = dict(classes=names, checkpoint=loaded["path"], data_dir=data_dir,
                   steps=config.train.steps, freeze_encoder=config.transfer.freeze_encoder,
                   loaded_layers=loaded["layers"])
    predictions = {}
    for init in INITS:
        model = built[init]
        set_encoder_frozen(model, config.transfer.freeze_encoder)
        keras.utils.set_random_seed(config.seed)  # the same dropout draws for both
        fit = train_segmentation(model, config, data_dir, progress, desc=f"train ({init} init)")
        scores = evaluate_segmentation(model, val, num_classes)
        results[init] = {**scores, **fit}
        predictions[init] = predict_classes(model, panel_images).numpy()
    results["val_images"] = results["cmp"]["images"]
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "comparison.json"), "w") as f:
            json.dump(_json_safe(results), f, indent=1)
        _write_panel(os.path.join(workdir, "comparison.png"), panel_images.numpy(),
                     panel_labels.numpy(), predictions)
    return results


def comparison_table(results):
    """The side-by-side table of compare_initializations' results: IoU per class and mIoU (%)."""
    missing = [k for k in (*INITS, "classes") if k not in results]
    if missing:
        raise ValueError(f"results lacks {missing}: pass what compare_initializations returned.")

    def cell(value):
        return "     -" if value is None or not np.isfinite(value) else f"{100 * value:6.1f}"

    width = max(len(name) for name in [*results["classes"], "pixel accuracy"])
    budget = (f"{results.get('steps', '?')} steps each, encoder "
              f"{'frozen' if results.get('freeze_encoder') else 'fine-tuned'}")
    lines = [f"Segmentation IoU (%) on {results.get('val_images', '?')} val images of "
             f"{results.get('data_dir', '?')}; {budget}.",
             f"{'class':<{width}}  random   CMP",
             f"{'-' * width}  ------  ------"]
    for k, name in enumerate(results["classes"]):
        lines.append(f"{name:<{width}}  {cell(results['random']['per_class_iou'][k])}  "
                     f"{cell(results['cmp']['per_class_iou'][k])}")
    lines.append(f"{'-' * width}  ------  ------")
    lines.append(f"{'mIoU':<{width}}  {cell(results['random']['miou'])}  "
                 f"{cell(results['cmp']['miou'])}")
    lines.append(f"{'pixel accuracy':<{width}}  {cell(results['random']['pixel_accuracy'])}  "
                 f"{cell(results['cmp']['pixel_accuracy'])}")
    lines.append(f"CMP encoder: {results.get('checkpoint', '?')}.")
    return "\n".join(lines)
