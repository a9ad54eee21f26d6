"""CMP pretraining: strategy, optimizer, schedule, the distributed loop, checkpoints and logs.

A custom loop (`strategy.run` inside a `tf.function`) rather than `model.fit`: fit is broken
under MultiWorkerMirroredStrategy in Keras 3 (keras#20585), and the loop owns resume exactly:
the checkpoint holds the model, the optimizer (its iteration count drives the LR schedule) and
the step, and the input pipeline skips the samples already seen (`make_dataset(start_step)`).

Run directory (cmp_tf.rundir; docs/design.md §8): config.json, log.txt, checkpoints/, tb/,
model.keras, encoder.keras, eval/, and summary.json once the run has finished.
"""
import json
import logging
import math
import numbers
import os
import re
import signal
import sys
import time

import cv2
import keras
import numpy as np
import tensorflow as tf

from cmp_tf import flow as flow_lib
from cmp_tf import losses
from cmp_tf import models
from cmp_tf import rundir
from cmp_tf.data import pipeline
from cmp_tf.data import shards
from cmp_tf.evaluation import propagation
from cmp_tf.models import layers

STRATEGIES = ("auto", "mirrored", "multiworker", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# Steps in a row mixed_float16 may skip for overflowing gradients before the run stops: each
# halves the loss scale, and 32 take it from 2^15 to 2^-17, which overflows no finite loss.
MAX_SKIPPED_IN_A_ROW = 32
MAX_SEED = 2**32 - 1  # keras.utils.set_random_seed's largest


def configure_cpu_devices(count):
    """Splits the CPU into `count` logical devices (tests of MirroredStrategy without GPUs).

    Must run before TensorFlow initializes its devices, i.e. before any op.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])


def check_devices(devices):
    """ValueError naming --devices unless each is a device of this machine ("/gpu:0",
    "/device:CPU:1" after --cpu_devices, ...): MirroredStrategy takes any name and places
    every variable on the CPU when the device is not there, silently."""
    names = [d.name for d in tf.config.list_logical_devices()]
    local = {(spec.device_type, spec.device_index) for spec in map(tf.DeviceSpec.from_string,
                                                                   names)}
    for device in devices:
        try:
            spec = tf.DeviceSpec.from_string(device)
        except ValueError as error:
            raise ValueError(f"--devices: {device!r} is not a device name ({error}).") from error
        if (str(spec.device_type).upper(), spec.device_index or 0) not in local:
            raise ValueError(f"--devices: {device!r} is not on this machine; it has "
                             f"{', '.join(names)}.")


def check_tf_config(text):
    """Refuses a TF_CONFIG that TensorFlow would fail on in its own words (a JSON error that
    names no variable) or hang on (a task outside the cluster), naming what is wrong."""
    example = ('e.g. {"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": '
               '"worker", "index": 0}}')
    try:
        spec = json.loads(text)
    except ValueError as error:
        raise ValueError(f"TF_CONFIG is not JSON ({error}); {example}.") from error
    cluster = spec.get("cluster") if isinstance(spec, dict) else None
    if not isinstance(cluster, dict) or not cluster or not all(
            isinstance(hosts, list) and hosts and all(isinstance(h, str) and ":" in h
                                                      for h in hosts)
            for hosts in cluster.values()):
        raise ValueError(f"TF_CONFIG's cluster must map each job to a list of host:port "
                         f"addresses; got {cluster!r}; {example}.")
    task = spec.get("task")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise ValueError(f"TF_CONFIG's task must name one of the cluster's jobs "
                         f"({', '.join(cluster)}) as its type; got {task!r}; {example}.")
    index, hosts = task.get("index", 0), cluster[task["type"]]
    if isinstance(index, str) and index.strip().isdigit():  # TensorFlow reads "0" as 0
        index = int(index)
    if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not (
            0 <= index < len(hosts)):
        raise ValueError(f"TF_CONFIG's task index must be a whole number in [0, {len(hosts)}) "
                         f"for the {len(hosts)} {task['type']} addresses; got {index!r}.")


def make_strategy(name="auto", devices=()):
    """auto: MirroredStrategy over all GPUs if there are several, else the default strategy;
    mirrored: MirroredStrategy over `devices` (all GPUs if empty); multiworker: from TF_CONFIG;
    tpu: TPUStrategy on the TPU the environment names."""
    devices = list(devices)
    if devices and name != "mirrored":
        raise ValueError(f"--devices={','.join(devices)} is for --strategy=mirrored; got "
                         f"--strategy={name}.")
    if devices:  # listing the devices starts the runtime, which a multi-worker one must not
        check_devices(devices)
    if name == "auto":
        if len(tf.config.list_logical_devices("GPU")) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices or None)
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy=multiworker needs TF_CONFIG (the cluster and this "
                             "worker's task) in the environment.")
        check_tf_config(os.environ["TF_CONFIG"])
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        except ValueError as error:  # TensorFlow's "Please provide a TPU Name to connect to."
            raise ValueError(f"--strategy=tpu found no TPU ({error}): run on a TPU machine, or "
                             "set TPU_NAME to one this machine reaches.") from error
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"--strategy={name!r} is unknown; known: {', '.join(STRATEGIES)}.")


@keras.saving.register_keras_serializable(package="cmp_tf")
class WarmupPiecewise(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `lr`, then lr * factor**k after the k-th boundary (the paper's steps)."""

    def __init__(self, lr, boundaries, factor, warmup_steps=0):
        self.lr, self.factor = float(lr), float(factor)
        self.boundaries, self.warmup_steps = [int(b) for b in boundaries], int(warmup_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        decays = tf.reduce_sum(tf.cast(step >= tf.constant(self.boundaries + [np.inf],
                                                           tf.float32), tf.float32))
        lr = self.lr * tf.pow(self.factor, decays)
        if self.warmup_steps:
            lr *= tf.minimum(1.0, (step + 1) / self.warmup_steps)
        return lr

    def get_config(self):
        return dict(lr=self.lr, boundaries=self.boundaries, factor=self.factor,
                    warmup_steps=self.warmup_steps)


def make_optimizer(config):
    """SGD with momentum (the paper) or Adam, on the warm-up + piecewise schedule.

    Weight decay is not the optimizer's: the step adds wd * w to every gradient (coupled L2 on
    every parameter, BatchNorm and biases included, as the reference's SGD).
    """
    s, o = config.schedule, config.optim
    if list(s.boundaries) != sorted(s.boundaries):
        raise ValueError(f"config.schedule.boundaries must increase; got {tuple(s.boundaries)}.")
    schedule = WarmupPiecewise(s.lr, s.boundaries, s.factor, s.get("warmup_steps", 0))
    if o.name == "sgd":
        optimizer = keras.optimizers.SGD(schedule, momentum=o.momentum)
    elif o.name == "adam":
        optimizer = keras.optimizers.Adam(schedule)
    else:
        raise ValueError(f"config.optim.name={o.name!r} is unknown; known: sgd, adam.")
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def make_step_fn(model, optimizer, loss_fn, global_batch, decay):
    """One replica's training step on (x, y) -> (loss share, guidance points share).

    The loss is averaged over the global batch (each replica contributes its share, the
    all-reduce of gradients sums them), and `decay` * w is added to every gradient: pass
    weight_decay / num_replicas, since those gradients are summed over replicas too.
    """

    def step_fn(x, y):
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            per_example = loss_fn(out["logits"], y["flow"], y["valid"])
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            scaled = optimizer.scale_loss(loss)  # loss scaling under mixed_float16
        update(optimizer, tape, scaled, model.trainable_variables, decay)
        return loss, tf.reduce_sum(x["sparse"][..., 2]) / global_batch

    return step_fn


def update(optimizer, tape, scaled_loss, variables, decay):
    """One optimizer step from `scaled_loss` (optimizer.scale_loss of the loss, recorded on
    `tape`), with `decay` x w added to every gradient: the reference's coupled L2 weight decay.
    Every training loop (CMP pretraining, segmentation transfer) steps through here."""
    grads = tape.gradient(scaled_loss, variables)
    if decay:
        # The gradients are the scaled loss's, which LossScaleOptimizer divides by its scale:
        # the decay is scaled alike (added as it was, it was 1 / 32768 of itself).
        scale = getattr(optimizer, "dynamic_scale", None)
        decay = decay if scale is None else decay * tf.cast(scale, tf.float32)
        grads = [g + tf.cast(decay, g.dtype) * tf.cast(v, g.dtype)
                 for g, v in zip(grads, variables)]
    optimizer.apply(grads, variables)


def _is_chief(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())


def check_count(value, field, minimum=1):
    """int(value) if it is a whole number >= `minimum`; else ValueError naming `field`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{field}={value!r} must be a whole number >= {minimum}.")
    return int(value)


def _positive(value, field):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
            math.isfinite(value) and value > 0):
        raise ValueError(f"{field}={value!r} must be a finite number > 0.")
    return float(value)


SEGMENTATION_HINT = ("a segmentation recipe (configs/segmentation.py) trains in evaluate.py "
                     "--task=segmentation --segmentation=CONFIG")


def check_config(config):
    """Refuses the training fields a loop would otherwise take as meaning something (0 steps
    "finish" an untrained run, a batch of 0 fails deep inside TensorFlow), naming the field,
    before anything is built or written. The model's fields are checked by building it."""
    missing = [name for name in ("flow", "guidance", "data", "train", "schedule", "optim")
               if name not in config]
    if missing or "transfer" in config or "short_size" not in config.data:
        raise ValueError(f"The config is not a CMP training recipe (it has no "
                         f"{', '.join(missing or ['data.short_size'])} field"
                         f"{'s' if len(missing) > 1 else ''}): {SEGMENTATION_HINT}; CMP "
                         "recipes are the other files in configs/.")
    t, d = config.train, config.data
    check_count(t.steps, "config.train.steps")
    for field in ("checkpoint_every", "keep_checkpoints", "log_every", "image_every"):
        if field in t:
            check_count(t[field], f"config.train.{field}")
    check_count(d.batch_size, "config.data.batch_size")
    crop = d.crop
    if not (isinstance(crop, (tuple, list)) and len(crop) == 2):
        raise ValueError(f"config.data.crop={crop!r} must be (height, width) in pixels.")
    for value in crop:
        check_count(value, "config.data.crop", 1)
    check_count(d.short_size, "config.data.short_size")
    if "shuffle_buffer" in d:
        check_count(d.shuffle_buffer, "config.data.shuffle_buffer")
    check_optimization(config)
    if max(crop) > d.short_size * min(d.get("zoom", (1.0, 1.0))):
        raise ValueError(f"config.data.crop={tuple(crop)!r} is larger than the frames' short "
                         f"side after resizing (config.data.short_size={d.short_size}, times "
                         f"the smallest config.data.zoom): every sample would be padded with "
                         "black pixels without flow. Raise short_size or shrink the crop.")


def check_optimization(config):
    """Refuses config.schedule, config.optim and config.seed values an optimizer would take
    without a word (a negative learning rate climbs the loss), naming the field: for any
    recipe that trains, CMP's or a segmentation transfer's."""
    s = config.schedule
    _positive(s.lr, "config.schedule.lr")
    _positive(s.factor, "config.schedule.factor")
    check_count(s.get("warmup_steps", 0), "config.schedule.warmup_steps", 0)
    for value in s.boundaries:
        check_count(value, "config.schedule.boundaries", 0)
    if "momentum" in config.optim and not 0 <= config.optim.momentum < 1:
        raise ValueError(f"config.optim.momentum={config.optim.momentum!r} must be in [0, 1).")
    seed = check_count(config.seed, "config.seed", 0)
    if seed > MAX_SEED:
        raise ValueError(f"config.seed={seed} must be at most {MAX_SEED} (Keras's seed range).")
    decay = config.optim.get("weight_decay", 0.0)
    if isinstance(decay, bool) or not isinstance(decay, numbers.Real) or not (
            math.isfinite(decay) and decay >= 0):
        raise ValueError(f"config.optim.weight_decay={decay!r} must be a finite number >= 0.")


def _warn(message, log):
    print(f"WARNING: {message}", file=sys.stderr)
    if log is not None:
        log.warning(message)


def restore_latest(checkpoint, folder, log=None):
    """Restores the newest checkpoint in `folder` that reads back whole and returns its path
    (None when there is none). A corrupt newest one (a crash or a full disk mid-write) falls
    back to the one before, with a warning naming both; a missing or unreadable checkpoint
    list (`folder`/checkpoint) falls back to the checkpoint files beside it, with a warning
    naming it. The folder's list then ends at the one restored (corrupt files stay until a
    save replaces them), so build the CheckpointManager after this. ValueError naming `folder`
    if none reads back."""
    list_file = os.path.join(folder, "checkpoint")
    try:
        state = tf.train.get_checkpoint_state(folder)
        list_problem = None if state is not None and state.model_checkpoint_path else "missing"
    except Exception as error:  # noqa: BLE001  garbage gives UnicodeDecodeError, a protobuf
        # ParseError, or ValueError for an empty file
        state, list_problem = None, f"unreadable ({type(error).__name__})"
    if list_problem is None:
        saved = list(state.all_model_checkpoint_paths)
        if state.model_checkpoint_path not in saved:
            saved.append(state.model_checkpoint_path)
        timestamps = list(state.all_model_checkpoint_timestamps)
    else:
        saved, timestamps = [p for _, p in sorted(rundir.checkpoints_in(folder).items())], []
        if not saved:
            return None
        _warn(f"The checkpoint list {list_file} is {list_problem}; resuming from the newest "
              f"checkpoint file beside it that reads back ({os.path.basename(saved[-1])} "
              f"first, of {len(saved)}).", log)
    failures = []
    for index in reversed(range(len(saved))):
        path = saved[index]
        try:
            checkpoint.restore(path).assert_existing_objects_matched()
        except Exception as error:  # noqa: BLE001  corruption surfaces as OpError,
            # IndexError ("Read less bytes than requested"), ValueError or a mismatch
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            failures.append(f"{path} ({type(error).__name__}: {reason[:200]})")
            continue
        if failures:
            _warn(f"Checkpoint {failures[0]} could not be read; resuming from the previous "
                  f"intact one, {path}, instead.", log)
        if failures or list_problem:
            level = tf.get_logger().level
            tf.get_logger().setLevel(logging.ERROR)  # its deprecation notice is not the user's
            try:
                tf.compat.v1.train.update_checkpoint_state(
                    folder, path, all_model_checkpoint_paths=saved[:index + 1],
                    all_model_checkpoint_timestamps=timestamps[:index + 1] or None,
                    last_preserved_timestamp=state.last_preserved_timestamp if state else None)
            finally:
                tf.get_logger().setLevel(level)
        return path
    raise ValueError(f"No checkpoint in {folder} can be read: {'; '.join(failures)}. Pass "
                     "--overwrite to start the run over, or choose another --workdir.")


def logged_loss(log_file, step):
    """The loss `log_file` recorded at `step` (the last step is always logged), None if it
    holds none: what a process that resumed after the last step, and so ran none, reports."""
    pattern = re.compile(rf" step {step} loss (\S+) ")
    try:
        with open(log_file) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        match = pattern.search(line)
        if match:
            try:
                return float(match.group(1))
            except ValueError:
                return None
    return None


class _TerminalHandler(logging.Handler):
    """Warnings, and records marked `terminal=True`, also on the terminal, above the bar."""

    def emit(self, record):
        from tqdm import tqdm

        if record.levelno >= logging.WARNING or getattr(record, "terminal", False):
            tqdm.write(self.format(record), file=sys.stderr)


def _logger(workdir, chief):
    """The run's log: every record in log.txt; warnings and `extra={"terminal": True}` records
    on the terminal too (a resume, a changed input)."""
    log = logging.getLogger("cmp_tf.train")
    log.setLevel(logging.INFO)
    log.handlers.clear()
    log.propagate = False
    if chief:
        handler = logging.FileHandler(os.path.join(workdir, "log.txt"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        log.addHandler(_TerminalHandler())
    return log


def _mark_start(writer, start, resumed):
    """A SessionLog START at the first step this process logs: TensorBoard's loaders drop the
    events of earlier processes from that step on (what a killed run logged past its last
    checkpoint would otherwise show twice). They ignore a run's first START, so a resumed run
    writes two: runs begun without one are mended too."""
    try:  # no public alias; without it the repeated steps stay, as they were
        from tensorflow.python.ops.summary_ops_v2 import import_event
    except ImportError:
        return
    event = tf.compat.v1.Event(step=start + 1, wall_time=time.time(), session_log=tf.compat.v1.
                               SessionLog(status=tf.compat.v1.SessionLog.START))
    with writer.as_default():
        for _ in range(2 if resumed else 1):
            import_event(tf.constant(event.SerializeToString()))


def _read(variable):
    """A scalar optimizer variable's value as a Python number, under any strategy (int() and
    float() refuse a MirroredVariable)."""
    return keras.ops.convert_to_numpy(variable).item()


def _set_sync_bn(model, synchronized):
    """BatchNorm statistics over the global batch (all replicas), or per replica."""
    for layer in layers.all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = synchronized


PREEMPTED_EXIT_CODE = 42  # what cluster schedulers are told means "restart me"


def _preemption_handler(strategy, manager, step, log):
    """What `BackupAndRestore` gives `fit`, for our loop: after a SIGTERM to any worker (a
    preemption notice), every worker saves a checkpoint at the same step and the process exits
    with PREEMPTED_EXIT_CODE; the same command then resumes from it."""

    def exit_fn():
        message = (f"Preempted (SIGTERM) at step {int(step)}: checkpoint saved to "
                   f"{manager.latest_checkpoint}; run the same command to resume.")
        log.warning(message)  # the run's log.txt
        print(message, file=sys.stderr, flush=True)  # and the terminal, as Ctrl-C's is
        sys.exit(PREEMPTED_EXIT_CODE)

    return tf.distribute.experimental.PreemptionCheckpointHandler(
        getattr(strategy, "cluster_resolver", None), manager,
        termination_config=tf.distribute.experimental.TerminationConfig(exit_fn=exit_fn))


# After SIGTERM or Ctrl-C, a loop that has not come back to save within this many seconds (a
# step stuck inside the input pipeline) is ended without saving.
SIGNAL_GRACE_S = 60.0


def _end_if_stuck_after_signal(log, checkpoint_path):
    """Makes SIGTERM and Ctrl-C end the run even while a step blocks inside TensorFlow.

    Python runs its signal handlers (the preemption save, KeyboardInterrupt) only between
    bytecodes, so a step blocked in tf.data would ignore both forever. The C handler still
    writes the signal number to the wakeup fd: a thread reads it and, if the loop has not ended
    SIGNAL_GRACE_S later, logs why and exits with 128 + the signal number.

    Returns:
        A function that disarms the watch (call it when the loop ends); None off the main thread.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    read, write = os.pipe()
    os.set_blocking(write, False)
    previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    disarmed = threading.Event()

    def watch():
        while True:
            data = os.read(read, 1)
            if not data or disarmed.is_set():
                os.close(read)
                return
            if data[0] in (signal.SIGTERM, signal.SIGINT) and not disarmed.wait(SIGNAL_GRACE_S):
                log.error(f"{signal.Signals(data[0]).name} received, and the training step did "
                          f"not return within {SIGNAL_GRACE_S:.0f} s (stuck reading data?): "
                          f"exiting without saving. The last checkpoint is "
                          f"{checkpoint_path() or 'none (none saved yet)'}.")
                logging.shutdown()
                os._exit(128 + data[0])

    threading.Thread(target=watch, name="signal-watch", daemon=True).start()

    def disarm():
        disarmed.set()
        signal.set_wakeup_fd(previous)
        os.close(write)  # the watcher's read returns b"": it ends

    return disarm


GUIDE_DOT_PX = 1  # radius of a guide's red dot in the preview panels (a black ring around it)


PREVIEW_FILE = ("eval", "preview.png")  # the finished model's preview panels, in the run


def _preview_panels(model, batch, count=2):
    """[N, H, 3W, 3] uint8: image with guidance marks | predicted flow | target flow; None if
    the predictions are not finite (the weights have diverged)."""
    x, y = batch
    pred = model(x, training=False)["flow"].numpy()
    if not np.isfinite(pred).all():
        return None
    panels = []
    for i in range(min(count, len(pred))):
        image = x["image"][i].numpy().astype(np.uint8).copy()
        for row, col in zip(*np.nonzero(x["sparse"][i, ..., 2].numpy() > 0)):  # guidance
            cv2.circle(image, (int(col), int(row)), GUIDE_DOT_PX + 1, (0, 0, 0), -1)
            cv2.circle(image, (int(col), int(row)), GUIDE_DOT_PX, (255, 0, 0), -1)
        target = y["flow"][i].numpy()
        scale = flow_lib.color_scale(target, y["valid"][i].numpy())
        panels.append(np.concatenate([image, flow_lib.flow_to_color(pred[i], scale),
                                      flow_lib.flow_to_color(target, scale)], 1))
    return np.stack(panels)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped `train`, which saved where it was; the message says where."""


class SetupError(ValueError):
    """`train` refused the run before its first step: a bad config field, a missing or
    unreadable source, a run directory it may not write. The message names which."""


def train(config, workdir, strategy="auto", devices=(), overwrite=False, progress=True):
    """Trains `config` into `workdir`, resuming from its last checkpoint if there is one.

    Returns:
        The summary dict also written to workdir/summary.json: steps, final loss, validation
        end-point errors of the model and of the zero and nearest-guidance fills.
    Raises:
        SetupError (a ValueError) when the config, the sources or the run directory refuse
        the run before it begins; pipeline.DataError (a ValueError) when the data stops it
        (unreadable samples), and Interrupted on Ctrl-C, both after saving a checkpoint
        where the run was.
    """
    policy = keras.mixed_precision.global_policy()  # the run sets config.train.precision's
    try:
        return _train(config, workdir, strategy, devices, overwrite, progress)
    finally:  # however it ends, the folder is free for the next process, and models built
        # next in this process compute as they did before (in float16 they computed after a
        # mixed_float16 run)
        rundir.release_run(workdir)
        keras.mixed_precision.set_global_policy(policy)


def _train(config, workdir, strategy, devices, overwrite, progress):
    from cmp_tf import progress as progress_lib

    try:  # everything that can refuse the run, before a step is taken
        check_config(config)
        t = config.train
        if t.get("precision", "float32") not in PRECISIONS:
            raise ValueError(f"config.train.precision={t.precision!r}; known: "
                             f"{', '.join(PRECISIONS)}.")
        keras.mixed_precision.set_global_policy(t.get("precision", "float32"))
        keras.utils.set_random_seed(config.seed)  # same init on every worker and every rerun
        strategy = make_strategy(strategy, devices)
        chief = _is_chief(strategy)
        # Building the model validates the config before any file is written.
        with strategy.scope():
            model = models.build_cmp(config)
            _set_sync_bn(model, config.model.get("sync_bn", True))
            optimizer = make_optimizer(config)
            optimizer.build(model.trainable_variables)
        loss_fn = losses.make_loss(config.flow)
        # The data is checked and read (videos ingested) and the validation preview taken
        # before the run folder is touched: a source refused here must not cost the run
        # `--overwrite` would replace, nor leave a half-made folder the corrected command then
        # refuses.
        resolved = pipeline.resolve_data(config)
        has_val = bool(config.data.val)
        preview = next(pipeline.batches(pipeline.make_dataset(config, "val"))) \
            if chief and has_val else None
        changes = rundir.prepare_workdir(workdir, config, overwrite) if chief else []
    except ValueError as error:
        raise SetupError(str(error)) from error
    log = _logger(workdir, chief)
    if changes:
        log.info(f"resuming with {'; '.join(changes)}")
    # Non-chief workers must take part in saving (collective ops) but write elsewhere.
    ckpt_dir = os.path.join(workdir, "checkpoints") if chief else os.path.join(
        workdir, f"checkpoints_worker{strategy.cluster_resolver.task_id}")
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")  # host-side counter
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)
    try:
        restored = restore_latest(checkpoint, ckpt_dir, log)
    except ValueError as error:  # nothing in the run's checkpoints reads back
        raise SetupError(str(error)) from error
    if restored:
        log.info(f"resumed from {restored} at step {int(step)}", extra={"terminal": progress})
    if chief:
        changed_input = rundir.note_input(workdir, *resolved["train"],
                                          getattr(strategy.extended, "_num_workers", 1))
        if restored and changed_input:
            log.warning(f"The training input differs from when this run began "
                        f"({'; '.join(changed_input)}): the resumed run draws other samples "
                        "than an uninterrupted one would have.")
    manager = tf.train.CheckpointManager(checkpoint, ckpt_dir,
                                         max_to_keep=t.get("keep_checkpoints", 3))
    start = int(step)

    if strategy.extended._in_multi_worker_mode():
        # Each worker reads its own part of the data (InputContext sharding).
        dataset = strategy.distribute_datasets_from_function(
            lambda context: pipeline.make_dataset(config, "train", context, start_step=start))
    else:
        # One worker: each global batch is split across the replicas, so N devices see
        # exactly the samples one device would.
        dataset = strategy.experimental_distribute_dataset(
            pipeline.make_dataset(config, "train", start_step=start))
    iterator = iter(dataset)
    global_batch = config.data.batch_size
    step_fn = make_step_fn(model, optimizer, loss_fn, global_batch,
                           config.optim.get("weight_decay", 0.0) / strategy.num_replicas_in_sync)
    if t.get("jit_compile", False):  # XLA on the per-replica step; the loop stays outside
        step_fn = tf.function(step_fn, jit_compile=True)

    @tf.function
    def train_step(iterator):
        loss, points = strategy.run(step_fn, args=next(iterator))
        # Counted in the same call as the update: a Ctrl-C, which Python raises only once the
        # call has returned, can never save weights one step ahead of their step.
        step.assign_add(1)
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.SUM, points, axis=None))

    # Non-chief workers log nothing: a folder of theirs would be one more run in TensorBoard.
    writer = tf.summary.create_file_writer(os.path.join(workdir, "tb")) if chief else \
        tf.summary.create_noop_writer()
    if chief:
        _mark_start(writer, start, bool(restored))
    log_every, image_every = t.get("log_every", 50), t.get("image_every", 500)
    bar = progress_lib.bar(total=t.steps, initial=start, desc="train", unit="step", disable=not (
        progress and chief), dynamic_ncols=True)
    last_time, last_step, loss = time.perf_counter(), start, float("nan")
    # Under mixed_float16 a step whose gradients overflow is skipped (LossScaleOptimizer halves
    # its scale instead): counted and logged, and the run stopped when skips never end.
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    updates = _read(optimizer.iterations) if scaled else 0
    skipped = skipped_in_a_row = 0
    preemption = _preemption_handler(strategy, manager, step, log)
    disarm = _end_if_stuck_after_signal(log, lambda: manager.latest_checkpoint)
    try:
        while int(step) < t.steps:
            current = int(step) + 1
            if current % log_every == 0 or current == t.steps:  # the rate this step uses
                lr = float(optimizer.learning_rate)
            loss_t, points_t = train_step(iterator)
            loss = float(loss_t)

            def stop(what):
                message = (f"{what} at step {current}; stopping. The last good checkpoint is "
                           f"{manager.latest_checkpoint or 'none (none saved yet)'}.")
                log.error(message)
                raise FloatingPointError(message)

            if not np.isfinite(loss):
                stop(f"Loss became {loss}")
            if scaled:
                done = _read(optimizer.iterations)
                skipped_in_a_row = 0 if done > updates else skipped_in_a_row + 1
                skipped += done == updates
                updates = done
                if skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
                    stop(f"The float16 gradients overflowed {skipped_in_a_row} steps in a row "
                         f"(loss scale now {_read(optimizer.dynamic_scale):g})")
            logged = current % log_every == 0 or current == t.steps
            if current == start + 1:  # it traced the step: left out of the ETA and steps/s
                bar.unpause()
                if not logged:
                    last_time, last_step = time.perf_counter(), current
            bar.update()
            if logged:
                now = time.perf_counter()
                steps_per_s = (current - last_step) / max(now - last_time, 1e-9)
                last_time, last_step = now, current
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2g}")
                overflow = (f"; {skipped} steps skipped since the last line (float16 "
                            f"overflow; loss scale {_read(optimizer.dynamic_scale):g})"
                            if skipped else "")
                log.info(f"step {current} loss {loss:.4f} lr {lr:.3g} steps/s {steps_per_s:.2f} "
                         f"points/sample {float(points_t):.1f}{overflow}")
                with writer.as_default(step=current):
                    tf.summary.scalar("train/loss", loss)
                    tf.summary.scalar("train/lr", lr)
                    tf.summary.scalar("train/steps_per_s", steps_per_s)
                    tf.summary.scalar("train/images_per_s", steps_per_s * global_batch)
                    tf.summary.scalar("train/guidance_points_per_sample", float(points_t))
                    if scaled:
                        tf.summary.scalar("train/skipped_steps", skipped)
                        tf.summary.scalar("train/loss_scale", _read(optimizer.dynamic_scale))
                skipped = 0
            if preview is not None and (current % image_every == 0 or current == t.steps):
                panels = _preview_panels(model, preview)
                if panels is None:
                    stop("Predicted flow became non-finite")
                with writer.as_default(step=current):
                    tf.summary.image("val/image_prediction_target", panels, max_outputs=2)
            if current % t.checkpoint_every == 0 or current == t.steps:
                manager.save(checkpoint_number=current)
            else:  # on SIGTERM to any worker, all save at the same step, then exit to be restarted
                preemption.save_checkpoint_if_preempted(checkpoint_number=current)
    except (KeyboardInterrupt, tf.errors.InvalidArgumentError) as error:
        failure = (None if isinstance(error, KeyboardInterrupt)
                   else pipeline.unreadable_data(error))
        if failure is None and not isinstance(error, KeyboardInterrupt):
            raise
        if failure is not None:
            failure = pipeline.name_undecodable(failure, [shard for shards, _ in
                                                          resolved.values() for shard in shards])
        if strategy.extended._in_multi_worker_mode() or int(step) == start:
            # saving needs every worker; or nothing was learned since the last checkpoint
            kept = f"The last checkpoint is {manager.latest_checkpoint or 'none (none saved yet)'}."
        else:
            manager.save(checkpoint_number=int(step))
            kept = f"Saved {manager.latest_checkpoint}; the same command resumes from it."
        what = "Interrupted" if failure is None else f"{failure} Stopped"
        log.warning(f"{what} at step {int(step)}. {kept}")
        if failure is None:
            raise Interrupted(f"Interrupted at step {int(step)}. {kept}") from None
        raise pipeline.DataError(f"{failure} Training stopped at step {int(step)}. {kept}") \
            from None
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a finished loop stops on SIGTERM again
        if disarm:
            disarm()
    bar.close()
    writer.flush()

    if not chief:
        return {}
    # Saved and scored as it will be read: in float32 whatever precision trained it.
    model = models.in_float32(model, config)
    # The encoder first: model.keras is what marks a run finished for every reader.
    encoder = layers.plain_keras_copy(model.get_layer("image_encoder"))
    rundir.save_model(encoder, os.path.join(workdir, rundir.ENCODER_FILE))  # loads without cmp_tf
    rundir.save_model(model, os.path.join(workdir, rundir.MODEL_FILE))
    report = None
    if has_val:
        pairs = pipeline.expected_pairs(*resolved["val"])  # a bar with an ETA: all of val
        report = propagation.evaluate_dataset(model, pipeline.make_dataset(config, "val"),
                                              progress=progress, total=None if pairs is None
                                              else -(-pairs // config.data.batch_size))
        with writer.as_default(step=int(step)):
            for method, value in report["epe"].items():
                tf.summary.scalar(f"val/epe_{method}", value)
        shards.write_json(os.path.join(workdir, "eval", "validation.json"), report)
        panels = _preview_panels(model, preview)  # the finished model's, as a picture file
        if panels is not None:
            with rundir.whole_file(os.path.join(workdir, *PREVIEW_FILE)) as partial:
                cv2.imwrite(partial, cv2.cvtColor(np.concatenate(list(panels), 0),
                                                  cv2.COLOR_RGB2BGR))
    # No step in this process (resumed after the last checkpoint): the loss the log recorded
    # at that step, else null (NaN is not JSON).
    summary = dict(steps=int(step), final_loss=loss if math.isfinite(loss) else
                   logged_loss(os.path.join(workdir, "log.txt"), int(step)),
                   validation=report, workdir=workdir,
                   ingestion=pipeline.ingestion_summary(config),  # failed and dropped videos
                   validation_also_trained_on=pipeline.videos_in_both(config) if report else [])
    shards.write_json(os.path.join(workdir, rundir.SUMMARY_FILE), summary)
    log.info(f"finished: {json.dumps(summary)}")
    return summary
