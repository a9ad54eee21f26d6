"""train.py as users run it: run directory, resume after SIGKILL, MirroredStrategy, failures."""
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import keras
import numpy as np
import pytest

from cmp_tf import training
from cmp_tf.data.synthetic import write_video
from tests.helpers import panning_frames

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_flags(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    train = [write_video(folder / f"t{i}.avi", panning_frames(6, size=(128, 160), seed=i))
             for i in range(2)]
    val = write_video(folder / "v.avi", panning_frames(4, size=(128, 160), seed=9))
    # The CPU-scale CMP with the paper's bins head, the recipe these runs were sized for
    # (python train.py's default is the shipped propagation recipe).
    return ["--config=configs/cpu_bins.py", f"--config.data.train=({train[0]!r}, {train[1]!r})",
            f"--config.data.val=({val!r},)", f"--config.data.cache_dir={folder / 'cache'}",
            "--config.data.short_size=128", "--config.data.batch_size=2",
            "--config.data.shuffle_buffer=8", "--config.ingest.max_side=-1",
            "--config.ingest.gaps=(1,)", "--config.train.log_every=1",
            "--config.train.image_every=2", "--config.schedule.warmup_steps=0"]


def _train(workdir, data_flags, *extra, wait=True, stderr=subprocess.DEVNULL):
    command = [sys.executable, "train.py", f"--workdir={workdir}", *data_flags, *extra]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if not wait:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=stderr)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def _weights(workdir):
    from cmp_tf import models  # noqa: F401  (registers the custom layers)

    return [w.numpy() for w in keras.models.load_model(
        os.path.join(workdir, "model.keras")).weights]


def test_a_run_fills_its_directory_and_refuses_to_be_overwritten(tmp_path, data_flags):
    result = _train(tmp_path / "run", data_flags, "--config.train.steps=3",
                    "--config.train.checkpoint_every=2")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("config.json", "log.txt", "model.keras", "encoder.keras", "summary.json",
                 "eval/validation.json", "checkpoints/checkpoint", "tb"):
        assert os.path.exists(tmp_path / "run" / name), name
    preview = cv2.imread(str(tmp_path / "run" / "eval" / "preview.png"))
    assert preview.shape[1] == 3 * preview.shape[0] // 2, preview.shape  # 2 rows of 3 panels
    assert "eval/preview.png" in result.stdout
    assert "EPE CMP" in result.stdout and "zero flow" in result.stdout
    # The encoder loads in plain Keras, without cmp_tf, ready for fine-tuning.
    code = ("import keras, numpy as np; m = keras.models.load_model({!r}); "
            "print(m(np.zeros((1, 128, 128, 3)))['features'].shape)").format(
        str(tmp_path / "run" / "encoder.keras"))
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=str(tmp_path), env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert "(1, 4, 4, 128)" in loaded.stdout
    again = _train(tmp_path / "run", data_flags, "--config.train.steps=3")
    assert again.returncode != 0 and "holds a finished run" in again.stderr
    assert "or raise --config.train.steps to train it on" in again.stderr
    # more steps train the finished run on from its last checkpoint
    more = _train(tmp_path / "run", data_flags, "--config.train.steps=5",
                  "--config.train.checkpoint_every=2")
    assert more.returncode == 0, more.stderr[-3000:]
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "resumed from" in log and "ckpt-3 at step 3" in log
    assert "resuming with config.train.steps: 3 -> 5" in log
    assert "training input differs" not in log and (tmp_path / "run" / "input.json").exists()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 5


def test_a_killed_run_resumes_to_the_same_weights(tmp_path, data_flags):
    flags = ["--deterministic", "--config.train.steps=8", "--config.train.checkpoint_every=2",
             "--config.schedule.boundaries=(3, 6)"]
    whole = _train(tmp_path / "whole", data_flags, *flags)
    assert whole.returncode == 0, whole.stderr[-3000:]
    # each step's line gives the rate that step trained with: step N is the optimizer's
    # iteration N - 1 (the rate read after it was the next step's)
    logged = [float(line.split(" lr ")[1].split()[0]) for line in
              (tmp_path / "whole" / "log.txt").read_text().splitlines() if " lr " in line]
    assert logged == pytest.approx([0.01] * 3 + [0.001] * 3 + [0.0001] * 2)
    proc = _train(tmp_path / "killed", data_flags, *flags, wait=False)
    state = tmp_path / "killed" / "checkpoints" / "checkpoint"
    deadline = time.time() + 300
    while proc.poll() is None and not state.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "model.keras").exists()
    resumed = _train(tmp_path / "killed", data_flags, *flags)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = (tmp_path / "killed" / "log.txt").read_text()
    assert "resumed from" in log and "resumed from" in resumed.stderr  # the terminal too
    for a, b in zip(_weights(tmp_path / "whole"), _weights(tmp_path / "killed")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sigterm_saves_where_it_is_exits_for_restart_and_resumes(tmp_path, data_flags):
    flags = ["--config.train.steps=20", "--config.train.checkpoint_every=1000"]
    terminal = tmp_path / "stderr.txt"
    with open(terminal, "w") as stderr:
        proc = _train(tmp_path / "run", data_flags, *flags, wait=False, stderr=stderr)
    log = tmp_path / "run" / "log.txt"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not (
            log.exists() and "step 3 " in log.read_text()):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be preempted"
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 42  # training.PREEMPTED_EXIT_CODE: "restart me"
    text = log.read_text()
    assert "Preempted (SIGTERM) at step" in text
    saved = int(text.split("Preempted (SIGTERM) at step ")[1].split(":")[0])
    assert f"Preempted (SIGTERM) at step {saved}" in terminal.read_text()  # said, not only logged
    assert 3 <= saved < 20  # between the regular checkpoints: saved because of the signal
    assert (tmp_path / "run" / "checkpoints" / f"ckpt-{saved}.index").exists()
    resumed = _train(tmp_path / "run", data_flags, *flags)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {tmp_path / 'run' / 'checkpoints' / f'ckpt-{saved}'} at step {saved}" \
        in log.read_text()
    assert (tmp_path / "run" / "model.keras").exists()


def test_mirrored_on_two_cpus_matches_one_device(tmp_path, data_flags):
    # A small LR: at 0.01 a max-pool tie or ReLU sign flipped by rounding can re-route a
    # gradient and make a few weights differ by ~1e-4 after 3 steps, on one device as on two.
    flags = ["--config.train.steps=3", "--config.train.checkpoint_every=3",
             "--config.schedule.lr=0.001"]
    one = _train(tmp_path / "one", data_flags, *flags)
    two = _train(tmp_path / "two", data_flags, *flags, "--strategy=mirrored", "--cpu_devices=2",
                 "--devices=/cpu:0,/cpu:1")
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    for a, b in zip(_weights(tmp_path / "one"), _weights(tmp_path / "two")):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_a_missing_data_path_fails_in_seconds_naming_it(tmp_path, data_flags):
    start = time.time()
    result = _train(tmp_path / "run", data_flags, "--config.data.train=('/no/such/clip.mp4',)")
    assert result.returncode != 0
    assert "config.data.train: /no/such/clip.mp4 does not exist" in result.stderr
    assert time.time() - start < 60


def test_a_diverging_loss_stops_the_run_naming_the_step(tmp_path, data_flags):
    result = _train(tmp_path / "run", data_flags, "--config.train.steps=20",
                    "--config.schedule.lr=1e12", "--config.train.checkpoint_every=100")
    assert result.returncode != 0
    assert "at step" in result.stderr and "stopping. The last good checkpoint" in result.stderr
    assert "became" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "model.keras").exists()


@pytest.mark.parametrize("text, message", [
    ("{bad", r"TF_CONFIG is not JSON \(Expecting property name"),
    ('{"cluster": {"worker": "localhost:2222"}, "task": {"type": "worker", "index": 0}}',
     r"TF_CONFIG's cluster must map each job to a list of host:port addresses"),
    ('{"cluster": {"worker": ["localhost:2222"]}}', r"TF_CONFIG's task must name one of the "
                                                    r"cluster's jobs \(worker\) as its type"),
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}',
     r"task index must be a whole number in \[0, 2\) for the 2 worker addresses; got 2"),
])
def test_a_bad_tf_config_is_named_before_the_cluster_starts(text, message, monkeypatch):
    """TensorFlow's own reading of TF_CONFIG names no variable (a bare JSON error) or, for a
    task outside the cluster, waits for workers that never come."""
    monkeypatch.setenv("TF_CONFIG", text)
    with pytest.raises(ValueError, match=message):
        training.make_strategy("multiworker")
    training.check_tf_config('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": '
                             '"worker", "index": 1}}')
    training.check_tf_config('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", '
                             '"index": "0"}}')  # as TensorFlow reads it


def _free_ports(count):
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start_workers(tmp_path, data_flags, *extra, count=2, tag=""):
    """`count` train.py processes forming one MultiWorkerMirroredStrategy cluster on localhost."""
    import json

    workers = [f"localhost:{port}" for port in _free_ports(count)]
    procs = []
    for index in range(count):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_CONFIG=json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        command = [sys.executable, "train.py", f"--workdir={tmp_path / 'run'}", *data_flags,
                   "--strategy=multiworker", *extra]
        # Output to files: with pipes, a worker blocked on a full pipe stalls the collectives.
        log = open(tmp_path / f"worker{index}{tag}.log", "w")
        procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                      stderr=subprocess.STDOUT))
    return procs


def _wait_all(procs, tmp_path, tag="", timeout=400):
    """Return codes of every worker; kills the others as soon as one fails."""
    codes = []
    for index, p in enumerate(procs):
        try:
            p.wait(timeout=timeout)
        finally:
            for q in procs:
                if q.poll() is None and p.returncode not in (0, 42):
                    q.kill()
        codes.append((p.returncode, (tmp_path / f"worker{index}{tag}.log").read_text()))
    return codes


def test_two_local_workers_train_together_and_agree(tmp_path, data_flags):
    import tensorflow as tf

    procs = _start_workers(tmp_path, data_flags, "--config.train.steps=3",
                           "--config.train.checkpoint_every=3")
    for code, output in _wait_all(procs, tmp_path):
        assert code == 0, output[-3000:]
    assert (tmp_path / "run" / "model.keras").exists()  # written by the chief only
    chief = tf.train.load_checkpoint(str(tmp_path / "run" / "checkpoints" / "ckpt-3"))
    other = tf.train.load_checkpoint(str(tmp_path / "run" / "checkpoints_worker1" / "ckpt-3"))
    names = [n for n in chief.get_variable_to_shape_map() if "model/" in n]
    assert names
    for name in names:
        np.testing.assert_array_equal(chief.get_tensor(name), other.get_tensor(name))


def test_a_preempted_worker_makes_the_cluster_save_and_the_restart_resumes(tmp_path, data_flags):
    # The cluster saves 2-3 steps after the signal: 16 steps leave room on a slow machine.
    flags = ["--config.train.steps=16", "--config.train.checkpoint_every=1000"]
    procs = _start_workers(tmp_path, data_flags, *flags)
    log = tmp_path / "run" / "log.txt"
    deadline = time.time() + 300
    while all(p.poll() is None for p in procs) and time.time() < deadline and not (
            log.exists() and "step 2 " in log.read_text()):
        time.sleep(0.05)
    os.kill(procs[1].pid, signal.SIGTERM)  # the non-chief worker gets the preemption notice
    for code, output in _wait_all(procs, tmp_path):
        assert code == 42, output[-3000:]  # both saved at the same step and asked for a restart
    text = log.read_text()
    saved = int(text.split("Preempted (SIGTERM) at step ")[1].split(":")[0])
    assert 2 <= saved < 16
    assert (tmp_path / "run" / "checkpoints" / f"ckpt-{saved}.index").exists()
    procs = _start_workers(tmp_path, data_flags, *flags, tag="_restart")
    for code, output in _wait_all(procs, tmp_path, tag="_restart"):
        assert code == 0, output[-3000:]
    assert f"at step {saved}" in log.read_text().split("resumed from")[1]
    assert (tmp_path / "run" / "model.keras").exists()


def test_devices_must_be_on_this_machine_and_for_mirrored():
    """MirroredStrategy takes any device name and, for one this machine lacks, trains with
    every variable on the CPU, silently; --devices is refused naming the devices there."""
    from cmp_tf import training

    with pytest.raises(ValueError, match="--devices: '/gpu:7' is not on this machine; it has "
                                         ".*CPU:0"):
        training.make_strategy("mirrored", ["/gpu:7"])
    with pytest.raises(ValueError, match="'bogus' is not a device name"):
        training.make_strategy("mirrored", ["bogus"])
    with pytest.raises(ValueError, match="is for --strategy=mirrored; got --strategy=auto"):
        training.make_strategy("auto", ["/cpu:0"])
    strategy = training.make_strategy("mirrored", ["/cpu:0"])
    assert strategy.num_replicas_in_sync == 1


def test_the_schedule_warms_up_then_divides_by_the_factor_at_each_boundary():
    """Without the boundary decays the paper's step schedule kept the peak rate to the end."""
    schedule = training.WarmupPiecewise(1.0, [10, 20], 0.1, warmup_steps=4)
    expected = {0: 0.25, 1: 0.5, 2: 0.75, 3: 1.0, 9: 1.0, 10: 0.1, 19: 0.1, 20: 0.01, 500: 0.01}
    for step, lr in expected.items():
        assert float(schedule(step)) == pytest.approx(lr, rel=1e-5), step


def test_weight_decay_shrinks_every_variable_even_with_no_gradient():
    """Coupled L2 adds decay * w to each gradient, kernels and biases alike; dropped, a
    zero-gradient step left the weights where they were."""
    import tensorflow as tf

    kernel = tf.Variable([[2.0, -4.0]])
    bias = tf.Variable([1.0, 0.5])
    optimizer = keras.optimizers.SGD(0.5)
    with tf.GradientTape() as tape:
        loss = 0.0 * (tf.reduce_sum(kernel) + tf.reduce_sum(bias))
    training.update(optimizer, tape, loss, [kernel, bias], decay=0.1)
    # w - lr * decay * w = 0.95 w
    np.testing.assert_allclose(kernel.numpy(), [[1.9, -3.8]], rtol=1e-6)
    np.testing.assert_allclose(bias.numpy(), [0.95, 0.475], rtol=1e-6)


def test_boundaries_that_do_not_increase_are_refused_naming_the_field():
    """A typo such as boundaries=(200, 100) was taken silently instead of named."""
    import ml_collections

    config = ml_collections.ConfigDict(dict(
        schedule=dict(lr=0.1, boundaries=(200, 100), factor=0.1),
        optim=dict(name="sgd", momentum=0.9)))
    with pytest.raises(ValueError, match=r"config.schedule.boundaries must increase; "
                                         r"got \(200, 100\)"):
        training.make_optimizer(config)
    config.schedule.boundaries = (100, 200)
    assert isinstance(training.make_optimizer(config), keras.optimizers.SGD)


def test_a_run_that_resumed_after_its_last_step_reports_the_logged_loss(tmp_path):
    """Killed during its final validation and run again, a run took no step in the new
    process and wrote final_loss null in summary.json, though log.txt held it."""
    log = tmp_path / "log.txt"
    assert training.logged_loss(str(log), 8) is None  # no log: null
    log.write_text("2026-12-07 10:00:00,000 step 4 loss 2.9236 lr 0.01 steps/s 1.00 x\n"
                   "2026-12-07 10:00:01,000 step 8 loss 1.7364 lr 0.01 steps/s 1.00 x\n"
                   "2026-12-07 10:00:02,000 resumed from ckpt-8 at step 8\n")
    assert training.logged_loss(str(log), 8) == 1.7364
    assert training.logged_loss(str(log), 4) == 2.9236
    assert training.logged_loss(str(log), 6) is None


def _recipe(data_flags, *extra):
    """The recipe train.py builds from `data_flags` and `extra` (its --config flags)."""
    from absl import flags
    from ml_collections import config_flags

    recipe = os.path.join(ROOT, "configs", "cpu_bins.py")  # whatever the working folder
    argv = ["train.py", f"--config={recipe}",
            *[flag for flag in (*data_flags, *extra) if flag.startswith("--config.")]]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", recipe, flag_values=values, lock_config=False,
                                    sys_argv=argv)
    values(argv)
    return values.config


def test_weight_decay_is_the_same_under_loss_scaling():
    """The decay was added to the scaled loss's gradients, which LossScaleOptimizer divides by
    its scale: under mixed_float16 it was 1 / 32768 of itself."""
    import tensorflow as tf

    kernel = tf.Variable([[2.0, -4.0]])
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.5))
    optimizer.build([kernel])
    with tf.GradientTape() as tape:
        loss = optimizer.scale_loss(0.0 * tf.reduce_sum(kernel))
    training.update(optimizer, tape, loss, [kernel], decay=0.1)
    np.testing.assert_allclose(kernel.numpy(), [[1.9, -3.8]], rtol=1e-6)


def test_mixed_float16_names_its_skipped_steps_and_leaves_the_policy_as_it_was(
        tmp_path, data_flags, monkeypatch):
    """Steps whose float16 gradients overflow are skipped by LossScaleOptimizer: they were not
    counted anywhere, an endless run of them "finished" with its initial weights, and the
    process went on building models in float16 after the run."""
    import tensorflow as tf

    from cmp_tf import losses

    plain = losses.make_loss

    def overflowing(flow_config):  # a zero term with a gradient float16 cannot hold
        loss_fn = plain(flow_config)
        return lambda logits, *rest: loss_fn(logits, *rest) + tf.reduce_mean(
            1e4 * (logits - tf.stop_gradient(logits)), axis=[1, 2, 3])

    monkeypatch.setattr(losses, "make_loss", overflowing)
    monkeypatch.setattr(training, "MAX_SKIPPED_IN_A_ROW", 3)
    config = _recipe(data_flags, "--config.train.steps=8", "--config.data.val=()",
                     "--config.train.precision=mixed_float16")
    with pytest.raises(FloatingPointError, match="float16 gradients overflowed 3 steps in a row"):
        training.train(config, str(tmp_path / "run"), progress=False)
    assert keras.mixed_precision.global_policy().name == "float32"
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "1 steps skipped since the last line (float16 overflow; loss scale" in log


def test_a_mixed_precision_run_is_saved_and_read_in_float32(tmp_path, data_flags):
    """model.keras kept the mixed policy: read, scored and exported in bfloat16 or float16 (a
    flow in 0.25 px steps at 32 px; LiteRT refused the file), unlike its own checkpoints."""
    from cmp_tf import models
    from cmp_tf.runtime import Propagator

    config = _recipe(data_flags, "--config.train.steps=2", "--config.data.val=()",
                     "--config.train.precision=mixed_bfloat16")
    run = tmp_path / "run"
    training.train(config, str(run), progress=False)
    assert keras.mixed_precision.global_policy().name == "float32"
    assert models.computes_in_float32(keras.models.load_model(run / "model.keras"))
    # a run saved by an earlier version, in its mixed policy, is read in float32 too
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = models.build_cmp(config)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mixed.save(run / "model.keras")
    network = Propagator(str(run))._network.runner.model
    assert models.computes_in_float32(network)
    np.testing.assert_array_equal(network.get_weights()[0], mixed.get_weights()[0])
    # beside a config.json of another kind, it is read as it was saved, not refused
    other = tmp_path / "other"
    other.mkdir()
    mixed.save(other / "model.keras")
    (other / "config.json").write_text('{"name": "not a recipe"}')
    from cmp_tf import runners

    assert not models.computes_in_float32(runners.KerasRunner(str(other / "model.keras")).model)


def test_deterministic_ops_and_xla_are_refused_together_in_one_line(tmp_path, data_flags):
    result = _train(tmp_path / "run", data_flags, "--deterministic",
                    "--config.train.jit_compile=True")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--deterministic cannot run with config.train.jit_compile=True" in result.stderr
    assert not (tmp_path / "run").exists()
