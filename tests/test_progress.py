"""Progress where people read it: a bar with a total (so an ETA), and, where stderr is a log
file rather than a terminal, a few plain lines instead of a carriage return per update."""
import numpy as np


def test_a_bar_written_to_a_log_file_is_a_few_lines_without_carriage_returns(capsys):
    """animate's bar over 300 frames, stderr captured (not a terminal, as `2> log.txt`): tqdm
    alone redrew it with a carriage return per update, one unreadable line in the file."""
    from cmp_tf.apps import animate

    image = np.zeros((8, 8, 3), np.uint8)
    flow = np.ones((8, 8, 2), np.float32)
    animate.animate_frames(image, flow, frames=300, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert 1 <= len(lines) <= 4, lines
    assert "300/300" in lines[-1]


def test_the_bar_on_a_terminal_is_tqdms_own():
    """On a terminal nothing changes: tqdm's bar on that stream, redrawn in place."""
    import io

    from cmp_tf import progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    for _ in progress.bar(range(3), file=stream, mininterval=0):
        pass
    assert "\r" in stream.getvalue() and "3/3" in stream.getvalue()


def test_the_validation_training_ends_with_has_a_total_so_an_eta(capsys):
    """evaluate_dataset's bar takes the batch count (train.py gives it from the shards'
    sidecars): `validation: 5batch [00:20, ...]` had no total and no ETA."""
    import tensorflow as tf

    from cmp_tf.evaluation import propagation

    sparse = np.zeros((1, 16, 16, 3), np.float32)
    sparse[0, 4, 4] = (1.0, 0.0, 1.0)
    x = {"image": tf.zeros((1, 16, 16, 3)), "sparse": tf.constant(sparse)}
    y = {"flow": tf.ones((1, 16, 16, 2)), "valid": tf.ones((1, 16, 16, 1))}
    model = lambda inputs, training: {"flow": tf.zeros((1, 16, 16, 2))}  # noqa: E731
    propagation.evaluate_dataset(model, [(x, y)] * 2, progress=True, total=2)
    assert "2/2" in capsys.readouterr().err


def test_expected_pairs_counts_list_entries_and_knows_when_it_cannot(tmp_path):
    from cmp_tf.data import pipeline

    assert pipeline.expected_pairs([], ["a", "b", "c"]) == 3
    assert pipeline.expected_pairs([str(tmp_path / "no_sidecar.tfrecord")], ["a"]) is None


def test_export_logs_each_file_with_its_count_and_what_is_left_then_the_parity_check(tmp_path):
    """A default export writes 12 files (some a minute each) and then times every one: each
    file's line says which of how many it was and about how long the rest take, and a line
    says the parity check has begun (before, minutes went by without a word)."""
    from cmp_tf import models
    from export import export_lib
    from tests.test_export import SIZE
    from tests.test_export import _small_config

    config = _small_config()
    lines = []
    export_lib.export(models.build_cmp(config), config, str(tmp_path), formats=("tflite",),
                      size=SIZE, parity_samples=1, repeats=1, log=lines.append)
    wrote = [line for line in lines if line.startswith("wrote ")]
    assert "file 1 of 2, about" in wrote[0] and "s to go)" in wrote[0], wrote
    assert wrote[1].endswith("file 2 of 2)"), wrote
    checking = next(i for i, line in enumerate(lines) if line.startswith("checking the 2 files"))
    assert checking == lines.index(wrote[1]) + 1
