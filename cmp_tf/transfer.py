"""Transfer learning: a CMP-trained image encoder inside a segmentation model.

What the paper measures (Table 1): the encoder CMP trained on unlabelled video, fine-tuned for
PASCAL VOC segmentation, against the same network from random initialization at the same
budget. This module loads a checkpoint's encoder into the segmentation model
(`models.segmentation`), trains both sides alike and tabulates their scores
(`evaluation.segmentation`).

    results = compare_initializations(config, "runs/cmp_synthetic")
    print(comparison_table(results))
"""
import copy
import hashlib
import json
import os
import shutil
import time
import zipfile

import keras
import numpy as np
import tensorflow as tf

from cmp_tf import data as data_lib
from cmp_tf import losses
from cmp_tf import rundir
from cmp_tf import training
from cmp_tf.data import synthetic
from cmp_tf.data import voc
from cmp_tf.evaluation import segmentation as scores
from cmp_tf.models import cmp
from cmp_tf.models import layers as L
from cmp_tf.models import segmentation
from cmp_tf.models.segmentation import ENCODER

INITS = ("random", "cmp")  # the two sides of the comparison
# How the encoder is trained in the comparison -> config.transfer.freeze_encoder.
ENCODER_MODES = {"fine_tuned": False, "frozen": True}
_PANEL_IMAGES = 4  # validation images in the comparison panel
_MAX_LISTED = 20  # mismatching layers listed in an error
_CHECKPOINTS = "checkpoints"  # a comparison's unfinished training, one folder per init
# What a comparison's training is made from: its checkpoints resume only under the same.
_STAMPED = ("config", "checkpoint", "checkpoint_stamp", "data_stamp")


# --- Checkpoints -----------------------------------------------------------------------------

def load_encoder(checkpoint):
    """The image encoder saved in `checkpoint` (see rundir.encoder_file) and the file it came from.

    encoder.keras loads with stock Keras; model.keras (the whole CMP model) needs cmp_tf's
    layers, registered by importing cmp_tf.models.
    """
    path = rundir.encoder_file(checkpoint)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"Checkpoint {path} is not a .keras file (not a zip archive: "
                         f"{os.path.getsize(path)} bytes), cut short or another format.")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # any failure to load is the file's problem
        raise ValueError(f"Checkpoint {path} could not be loaded as a Keras model: "
                         f"{type(error).__name__}: {error}") from error
    if ENCODER in {layer.name for layer in model.layers}:
        if "flow" not in getattr(model, "output_names", ()):
            raise ValueError(f"Checkpoint {path} holds a {model.name!r} model whose encoder was "
                             "not trained by CMP (it has no flow output): a segmentation "
                             "model? Name a CMP run, its model.keras or its encoder.keras.")
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
    trained, from_run = rundir.read_config(os.fspath(checkpoint))
    encoder = trained.model.get("image_encoder") if from_run else None
    if encoder and encoder != config.model.image_encoder:
        raise ValueError(f"Checkpoint {checkpoint} was trained with model.image_encoder="
                         f"{encoder!r} but config.model.image_encoder="
                         f"{config.model.image_encoder!r}; build the segmentation recipe on the "
                         "recipe it was trained with: evaluate.py --segmentation=configs/"
                         "segmentation.py:recipe=<that recipe>, the name of its file in "
                         "configs/.")


# --- Data and training -----------------------------------------------------------------------

def check_config(config):
    """Refuses a config that is not a segmentation recipe (a CMP recipe given as one), and
    training fields an optimizer or the pipeline would take without a word (a negative
    learning rate, a batch of 0), naming the field, before any data is written."""
    if "transfer" not in config or "head" not in config:
        raise ValueError("The segmentation config has no transfer and head fields: it is a CMP "
                         "recipe. --segmentation reads configs/segmentation.py, whose "
                         ":recipe=NAME names the CMP recipe whose encoder is transferred.")
    training.check_optimization(config)
    for field in ("batch_size", "eval_batch_size"):
        training.check_count(config.data[field], f"config.data.{field}")
    for field in ("steps", "log_every", "checkpoint_every"):
        if field in config.train:
            training.check_count(config.train[field], f"config.train.{field}")


def _round_up(value, multiple):
    return -(-value // multiple) * multiple


def data_folder(config, data_dir=None):
    """The segmentation set's folder: `data_dir`, else config.data.dir, which for the
    generated set (config.data.synthetic) is a cache, taken under $CMP_TF_CACHE_HOME when
    relative (cmp_tf.data.cache_dir); a folder of your own is taken as written."""
    if data_dir:
        return os.fspath(data_dir)
    folder = os.fspath(config.data.dir or "")
    return data_lib.cache_dir(folder) if folder and config.data.synthetic else folder


def make_dataset(config, split, data_dir=None, stride=1, start_step=0):
    """config.data's pipeline for "train" (augmented, repeated; from batch `start_step` of its
    stream when resuming) or "val" (one pass, padded to the largest image rounded up to
    `stride`, the encoder's)."""
    d = config.data
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val'; got {split!r}.")
    folder = data_folder(config, data_dir)
    crop = tuple(d.crop)
    if len(crop) != 2 or crop[0] % stride or crop[1] % stride or min(crop) < stride:
        raise ValueError(f"config.data.crop={crop} must be two multiples of the encoder's "
                         f"stride {stride}.")
    image_pad = L.IMAGENET_MEAN  # padding is zero after the model's normalization
    if split == "train":
        return voc.make_dataset(folder, d.train_split, d.num_classes, training=True,
                                batch_size=d.batch_size, crop=crop, scale=tuple(d.scale),
                                flip=d.flip, seed=config.seed, shuffle_buffer=d.shuffle_buffer,
                                image_pad=image_pad, max_images=d.max_train_images,
                                start_step=start_step)
    _, _, _, sizes = voc.read_split(folder, d.val_split)
    if d.max_val_images > 0:
        sizes = sizes[:d.max_val_images]
    largest = np.max(sizes, axis=0)
    pad_to = (_round_up(int(largest[0]), stride), _round_up(int(largest[1]), stride))
    return voc.make_dataset(folder, d.val_split, d.num_classes, training=False,
                            batch_size=d.eval_batch_size, pad_to=pad_to, image_pad=image_pad,
                            max_images=d.max_val_images)


def train_segmentation(model, config, data_dir=None, progress=True, desc="train",
                       checkpoint_dir=None, stamp=None):
    """Trains `model` on the train split for config.train.steps with config.optim/schedule.

    SGD or Adam on the recipe schedule (training.make_optimizer), coupled L2 weight decay on
    every trainable weight as in CMP training, one device.

    With `checkpoint_dir`, the model, the optimizer and the step are saved there every
    config.train.checkpoint_every steps and at the last, and a run killed part-way resumes
    from its newest checkpoint, drawing the batches an uninterrupted run would have. `stamp`
    (any JSON value: what the run was made from) is kept beside them; checkpoints of another
    stamp are from other inputs and are removed, and the run starts over.

    Returns:
        {"final_loss": mean loss of the last config.train.log_every steps, "steps",
         "seconds" (training time, over every resumed part)}.
    """
    from cmp_tf import progress as progress_lib

    check_config(config)
    t = config.train
    every = t.get("checkpoint_every", t.steps)
    optimizer = training.make_optimizer(config)
    variables = model.trainable_variables
    optimizer.build(variables)
    decay = float(config.optim.get("weight_decay", 0.0))
    saved = _TrainingState(checkpoint_dir, model, optimizer, stamp, desc, progress)
    start, recent, seconds = saved.restore()
    stride = cmp.part_strides(model.get_layer(ENCODER))["features"]
    dataset = make_dataset(config, "train", data_dir, stride, start_step=start)

    @tf.function
    def step(image, label):
        with tf.GradientTape() as tape:
            loss = losses.segmentation_loss(model(image, training=True), label)
            scaled = optimizer.scale_loss(loss)
        training.update(optimizer, tape, scaled, variables, decay)
        return loss

    began = time.perf_counter()
    iterator = iter(dataset)
    with progress_lib.bar(total=t.steps, initial=start, desc=desc, unit="step",
                          disable=not progress, dynamic_ncols=True) as bar:
        for current in range(start + 1, t.steps + 1):
            loss = float(step(*next(iterator)))
            if not np.isfinite(loss):
                raise FloatingPointError(f"Segmentation loss became {loss} at step {current} "
                                         f"({desc}); lower config.schedule.lr.")
            recent = (recent + [loss])[-t.log_every:]
            bar.update()
            if current % t.log_every == 0:
                bar.set_postfix(loss=f"{np.mean(recent):.3f}")
            if current % every == 0 or current == t.steps:
                saved.save(current, recent, seconds + time.perf_counter() - began)
    return {"final_loss": float(np.mean(recent)), "steps": t.steps,
            "seconds": seconds + time.perf_counter() - began}


class _TrainingState:
    """A segmentation run's checkpoints (model, optimizer, step) and, beside them in
    state.json, what the checkpoints do not hold: the stamp of the run's inputs, the recent
    losses and the training time so far. Without a folder it saves and restores nothing."""

    def __init__(self, folder, model, optimizer, stamp, desc, progress):
        self.folder, self.desc, self.progress = folder, desc, progress
        self.stamp = json.loads(json.dumps(_json_safe(stamp)))
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        # Keras keeps its layers' random state (dropout's seed generators) out of the model's
        # checkpoint; without it a resumed run would draw other dropout masks.
        weights = {id(w) for w in model.weights}
        random_state = [v for v in model.variables if id(v) not in weights]
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=self.step,
                                              random_state=random_state)
        self.manager = None

    @property
    def _state_file(self):
        return os.path.join(self.folder, "state.json")

    def restore(self):
        """(first step to train, recent losses, seconds trained) of the newest checkpoint, or
        (0, [], 0.0) when there is none of this stamp."""
        if not self.folder:
            return 0, [], 0.0
        state = None
        if os.path.isdir(self.folder):
            try:
                with open(self._state_file) as f:
                    state = json.load(f)
            except (OSError, ValueError):
                state = None
            if state is None or state.get("stamp") != self.stamp:
                if self.progress:
                    print(f"{self.desc}: the checkpoints in {self.folder} were made from other "
                          "inputs (config, checkpoint or data) or are incomplete; starting "
                          "over.")
                shutil.rmtree(self.folder)
                state = None
        restored = (training.restore_latest(self.checkpoint, self.folder)
                    if state is not None else None)
        os.makedirs(self.folder, exist_ok=True)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.folder, max_to_keep=1)
        if not restored:
            return 0, [], 0.0
        start = int(self.step)
        if self.progress:
            print(f"{self.desc}: resuming from {restored} at step {start}")
        if state.get("step") != start:  # state.json is written after each save: a kill
            return start, [], 0.0  # between the two leaves it one save behind
        return start, list(state.get("recent", [])), float(state.get("seconds", 0.0))

    def save(self, current, recent, seconds):
        if not self.folder:
            return
        self.step.assign(current)
        self.manager.save(checkpoint_number=current)
        with rundir.whole_file(self._state_file) as partial, open(partial, "w") as f:
            json.dump({"stamp": self.stamp, "step": current, "recent": recent,
                       "seconds": seconds}, f, indent=1)


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


def check_classes(config, data_dir, names):
    """Reads both splits' labels: refuses a class no label of either split holds (a wrong
    config.data.num_classes, or masks saved as 0 / 255) and warns of a class the val split
    lacks, which mIoU then leaves out for both sides."""
    d = config.data
    counts = {split: voc.class_counts(data_dir, split, d.num_classes, limit)
              for split, limit in ((d.train_split, d.max_train_images),
                                   (d.val_split, d.max_val_images))}
    nowhere = [k for k in range(d.num_classes) if not any(c[k] for c in counts.values())]
    if nowhere:
        raise ValueError(f"config.data.num_classes={d.num_classes}, but no label of "
                         f"{d.train_split!r} or {d.val_split!r} in {data_dir} holds class"
                         f"{'es' if len(nowhere) > 1 else ''} "
                         f"{', '.join(f'{k} ({names[k]})' for k in nowhere)}: is num_classes "
                         f"right? {voc.ZERO_255_HINT}")
    absent = [k for k in range(d.num_classes) if not counts[d.val_split][k]]
    if absent:
        tf.get_logger().warning(
            f"The {d.val_split!r} split of {data_dir} holds no pixel of "
            f"{', '.join(f'class {k} ({names[k]})' for k in absent)}: mIoU leaves "
            f"{'them' if len(absent) > 1 else 'it'} out, for both initializations.")
    return counts


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
            for a few val images) are written there, and each side's training is saved in
            workdir/checkpoints/ as it goes (removed once comparison.json is written): a
            comparison killed part-way resumes where it was when run again.
    Returns:
        {"random": scores, "cmp": scores, "classes", "checkpoint", "data_dir", "steps",
        "freeze_encoder", "val_images"}; scores as evaluate_segmentation's plus the training
        summary (final_loss, seconds).
    """
    check_config(config)
    data_dir = data_folder(config, data_dir)
    if not data_dir:
        raise ValueError("config.data.dir is empty: name a VOC-format folder.")
    rundir.encoder_file(checkpoint)  # fail before any data is written or any step is trained
    check_checkpoint_recipe(config, checkpoint)
    names = _class_names(config, data_dir)
    check_classes(config, data_dir, names)  # a broken or mislabelled set fails before building
    num_classes = config.data.num_classes
    built = {}
    for init in INITS:
        keras.utils.set_random_seed(config.seed)  # the same head weights for both
        built[init] = segmentation.build_segmentation_model(config, num_classes)
    loaded = load_encoder_weights(built["cmp"], checkpoint)
    stride = cmp.part_strides(built["cmp"].get_layer(ENCODER))["features"]
    val = make_dataset(config, "val", data_dir, stride)
    panel_images, panel_labels = next(iter(val.unbatch().batch(_PANEL_IMAGES)))
    results = dict(classes=names, checkpoint=loaded["path"], data_dir=data_dir,
                   steps=config.train.steps, freeze_encoder=config.transfer.freeze_encoder,
                   seed=config.seed, loaded_layers=loaded["layers"], config=config.to_dict(),
                   checkpoint_stamp=_file_stamp(loaded["path"]),
                   data_stamp=_data_stamp(config, data_dir))
    predictions = {}
    for init in INITS:
        model = built[init]
        segmentation.set_encoder_frozen(model, config.transfer.freeze_encoder)
        keras.utils.set_random_seed(config.seed)  # the same dropout draws for both
        fit = train_segmentation(
            model, config, data_dir, progress, desc=f"train ({init} init)",
            checkpoint_dir=os.path.join(workdir, _CHECKPOINTS, init) if workdir else None,
            stamp={key: results[key] for key in _STAMPED} | {"init": init})
        result = scores.evaluate_segmentation(model, val, num_classes, progress,
                                              desc=f"score ({init} init)")
        results[init] = {**result, **fit}
        predictions[init] = scores.predict_classes(model, panel_images).numpy()
    results["val_images"] = results["cmp"]["images"]
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        _write_panel(os.path.join(workdir, "comparison.png"), panel_images.numpy(),
                     panel_labels.numpy(), predictions)
        path = os.path.join(workdir, "comparison.json")
        with rundir.whole_file(path) as partial, open(partial, "w") as f:
            json.dump(_json_safe(results), f, indent=1)
        shutil.rmtree(os.path.join(workdir, _CHECKPOINTS), ignore_errors=True)  # now done
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


# --- Over seeds and encoder modes -----------------------------------------------------------

def _check_seeds_and_modes(seeds, modes):
    seeds, modes = list(seeds), list(modes)
    if not seeds or len(set(seeds)) != len(seeds) or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"seeds must be distinct integers, at least one; got {seeds}.")
    unknown = [m for m in modes if m not in ENCODER_MODES]
    if not modes or unknown or len(set(modes)) != len(modes):
        raise ValueError(f"modes must be distinct names from {sorted(ENCODER_MODES)}, at least "
                         f"one; got {modes}.")
    return [int(s) for s in seeds], modes


def _file_stamp(path):
    """Size and modification time: a checkpoint retrained in place is not the one scored."""
    info = os.stat(path)
    return [info.st_size, info.st_mtime_ns]


def _data_stamp(config, data_dir):
    """The folder, and a digest of the stamps of its split lists and of every image and label
    they name: a sweep rerun on other data, or after a label was mended, is not reused."""
    digest = hashlib.sha256()
    for split in (config.data.train_split, config.data.val_split):
        try:  # the files' stamps only: nothing is opened
            listed, _, images, labels = voc.split_files(data_dir, split)
        except ValueError as error:
            digest.update(f"{error}\n".encode())
            continue
        for path in (listed, *images, *labels):
            stamp = _file_stamp(path) if os.path.isfile(path) else None
            digest.update(f"{path} {stamp}\n".encode())
    return [data_dir, digest.hexdigest()]


def _finished_run(path, config, checkpoint, data_dir):
    """A sub-run's comparison.json if it was made with this exact config, checkpoint and data,
    so an interrupted sweep resumes without redoing finished runs; else None."""
    try:
        with open(os.path.join(path, "comparison.json")) as f:
            done = json.load(f)
    except (OSError, ValueError):
        return None
    encoder = rundir.encoder_file(checkpoint)
    same = (done.get("config") == json.loads(json.dumps(config.to_dict()))
            and done.get("checkpoint") == encoder
            and done.get("checkpoint_stamp") == _file_stamp(encoder)
            and done.get("data_stamp") == _data_stamp(config, data_folder(config, data_dir)))
    return done if same else None


def compare_over_seeds(config, checkpoint, seeds, modes=tuple(ENCODER_MODES), data_dir=None,
                       workdir=None, progress=True):
    """compare_initializations at every seed, with the encoder fine-tuned and frozen: one
    seed's few points of mIoU are mostly noise on small sets, a paired mean over seeds is not.

    Each (mode, seed) run is written to workdir/<mode>_seed<seed>/ and reused when it exists
    with the same config and checkpoint, so an interrupted sweep resumes.

    Args:
        config: a segmentation config; its seed and transfer.freeze_encoder are set per run.
        checkpoint: a CMP run directory, model.keras or encoder.keras.
        seeds: distinct integers.
        modes: names from ENCODER_MODES ("fine_tuned", "frozen").
        data_dir, progress: as compare_initializations.
        workdir: if given, the runs, seeds.json and seeds.png (mIoU per seed) go there.
    Returns:
        seed_summary of the runs: {"seeds", "modes", "runs": {mode: [results per seed]}, ...}.
    """
    seeds, modes = _check_seeds_and_modes(seeds, modes)
    check_config(config)
    runs, total = {}, len(modes) * len(seeds)
    for mode in modes:
        runs[mode] = []
        for seed in seeds:
            if progress:  # each run has its own bars: which one this is, of how many
                print(f"{mode}, seed {seed}: run {sum(map(len, runs.values())) + 1} of {total}",
                      flush=True)
            run_config = copy.deepcopy(config)
            run_config.seed = seed
            run_config.transfer.freeze_encoder = ENCODER_MODES[mode]
            sub = os.path.join(workdir, f"{mode}_seed{seed}") if workdir else None
            done = _finished_run(sub, run_config, checkpoint, data_dir) if sub else None
            if done is None:
                done = _json_safe(compare_initializations(run_config, checkpoint, data_dir, sub,
                                                          progress))
            elif progress:
                print(f"{mode}, seed {seed}: reusing {sub}/comparison.json")
            runs[mode].append(done)
    summary = seed_summary(runs)
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        with rundir.whole_file(os.path.join(workdir, "seeds.json")) as partial, \
                open(partial, "w") as f:
            json.dump(summary, f, indent=1)
        plot_seeds(summary, os.path.join(workdir, "seeds.png"))
    return summary


def seed_summary(runs):
    """mIoU per mode and initialization over seeds: the values, their mean and sample standard
    deviation, and the paired CMP - random gain (same seed: same head, data order, dropout).

    Args:
        runs: {mode: [compare_initializations results, one per seed]}.
    """
    summary = {"modes": {}, "seeds": None}
    for mode, results in runs.items():
        if not results:
            raise ValueError(f"runs[{mode!r}] is empty: expected one result per seed.")
        seeds = [r.get("seed") for r in results]
        if summary["seeds"] is None:
            summary["seeds"] = seeds
        row = {}
        values = {init: np.array([r[init]["miou"] for r in results], np.float64)
                  for init in INITS}
        values["gain"] = values["cmp"] - values["random"]
        for name, v in values.items():
            row[name] = {"miou": v.tolist(), "mean": float(v.mean()),
                         "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
        row["cmp_better_at"] = int((values["gain"] > 0).sum())
        summary["modes"][mode] = row
    first = next(iter(runs.values()))[0]
    summary.update(steps=first.get("steps"), val_images=first.get("val_images"),
                   data_dir=first.get("data_dir"), checkpoint=first.get("checkpoint"))
    return summary


def seeds_table(summary):
    """The over-seeds table: mIoU (%) mean +- standard deviation per mode, the paired gain, and
    every seed's pair."""
    lines = [f"Segmentation mIoU (%) over seeds {', '.join(map(str, summary['seeds']))} on "
             f"{summary.get('val_images', '?')} val images of {summary.get('data_dir', '?')}; "
             f"{summary.get('steps', '?')} steps each; mean +- standard deviation.",
             f"{'encoder':<11}  {'random':>14}  {'CMP':>14}  {'CMP - random':>14}  "
             "CMP better  per seed (random / CMP)",
             f"{'-' * 11}  {'-' * 14}  {'-' * 14}  {'-' * 14}  ----------  ----------------------"]
    for mode, row in summary["modes"].items():
        def cell(name, sign=""):
            return f"{100 * row[name]['mean']:{sign}6.1f} +- {100 * row[name]['std']:4.1f}"

        pairs = ", ".join(f"{100 * a:.1f} / {100 * b:.1f}"
                          for a, b in zip(row["random"]["miou"], row["cmp"]["miou"]))
        better = f"{row['cmp_better_at']} of {len(row['gain']['miou'])}"
        lines.append(f"{mode.replace('_', '-'):<11}  {cell('random'):>14}  {cell('cmp'):>14}  "
                     f"{cell('gain', '+'):>14}  {better:<10}  {pairs}")
    lines.append(f"CMP encoder: {summary.get('checkpoint', '?')}.")
    return "\n".join(lines)


def plot_seeds(summary, path):
    """mIoU per seed, random and CMP side by side, one panel per encoder mode; the means as
    bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(summary["modes"])
    figure, axes = plt.subplots(1, len(modes), figsize=(4 * len(modes), 3.5), squeeze=False,
                                sharey=True)
    for axis, mode in zip(axes[0], modes):
        row = summary["modes"][mode]
        for x, init in enumerate(INITS):
            values = 100 * np.array(row[init]["miou"])
            axis.bar(x, values.mean(), color=f"C{x}", alpha=0.35, width=0.6)
            axis.scatter(np.full(len(values), x), values, color=f"C{x}", zorder=3)
        axis.set_xticks(range(len(INITS)), ["random", "CMP"])
        axis.set_title(mode.replace("_", "-"))
        axis.grid(True, axis="y", alpha=0.3)
    axes[0][0].set_ylabel("mIoU (%)")
    figure.suptitle(f"seeds {', '.join(map(str, summary['seeds']))}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
