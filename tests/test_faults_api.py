"""Bad input to the Python API a user calls directly: a ValueError naming the argument, never a
NumPy / OpenCV error from deep inside, a NaN flow or a silently wrong score."""
import os

import numpy as np
import pytest

from cmp_tf import flow as flow_lib
from cmp_tf.data import formats
from cmp_tf.data import sampling
from cmp_tf.evaluation import benchmark


@pytest.fixture(scope="module")
def propagator():
    from cmp_tf.runtime import Propagator

    return Propagator()


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_side="abc"), r"max_side must be -1 \(full size\) or a positive whole number"),
    (dict(max_side=float("nan")), "max_side must be"), (dict(max_side=None), "max_side must be"),
    (dict(max_side=1.5), "got 1.5"), (dict(max_side=True), "got True"),
    (dict(max_side=0), "got 0"), (dict(threads="x"), "threads must be None"),
    (dict(threads=0), "threads must be None"),
])
def test_the_propagators_options_are_checked_before_the_model_loads(kwargs, message):
    from cmp_tf.runtime import Propagator

    with pytest.raises(ValueError, match=message):
        Propagator(**kwargs)


def test_a_batch_of_guidance_is_a_list_of_pairs(propagator):
    image = np.zeros((64, 64, 3), np.uint8)
    pair = ([[1, 1]], [[1, 1]])
    for guidance in (None, (g for g in [pair]), [(*pair, [[1, 1]])], {"a": 1}, [[1, 2, 3]]):
        with pytest.raises(ValueError, match="guidance must be a list of .points, vectors. "
                                             "pairs"):
            propagator.propagate_batch(image, guidance)
    with pytest.raises(ValueError, match="at least one"):
        propagator.propagate_batch(image, [])
    assert propagator.propagate_batch(image, (pair, pair)).shape == (2, 64, 64, 2)


def test_vectors_too_large_for_float32_fills_are_refused_and_large_ones_stay_finite(propagator):
    image = np.zeros((128, 160, 3), np.uint8)
    with pytest.raises(ValueError, match=r"vectors must be at most 1e\+06 px in u and v; got "
                                         r"3e\+38"):
        propagator.propagate(image, [[10, 10]], [[3e38, 0]])
    flow = propagator.propagate(image, [[10, 10], [100, 100]],
                                [[sampling.MAX_VECTOR_PX, -sampling.MAX_VECTOR_PX]] * 2)
    assert np.isfinite(flow).all()


def test_an_image_longer_than_the_fills_span_is_shrunk_not_filled_short():
    """A free-size graph plans the nearest fill's passes for its fills' max_size (2048 px): a
    longer image would leave its far end with another guide's motion, or none."""
    from cmp_tf.runtime import Propagator

    still = Propagator(fade=False)  # one guide moves everything
    assert still.max_input_side == 2048
    assert still.working_size(128, 3072) == (128, 2048)  # the height at its minimum, 128
    image = np.full((128, 3072, 3), 120, np.uint8)
    flow = still.propagate(image, [[5, 64]], [[6, 0]])
    np.testing.assert_allclose(flow[64, [0, 1500, -1]], [[6, 0]] * 3, atol=0.05)


def test_flow_beyond_float32_empty_flow_and_a_bad_max_flow_are_refused(tmp_path):
    huge = np.full((4, 4, 2), 1e300)  # float64: inf once float32
    for call in (lambda: flow_lib.flow_to_color(huge),
                 lambda: formats.write_flo(tmp_path / "huge.flo", huge),
                 lambda: sampling.sample_guidance(huge, strategies=("full",))):
        with pytest.raises(ValueError, match="NaN or infinite values"):
            call()
    with pytest.raises(ValueError, match="at least one pixel"):
        flow_lib.flow_to_color(np.zeros((0, 4, 2), np.float32))
    with pytest.raises(ValueError, match="at least one pixel"):
        formats.write_flo(tmp_path / "empty.flo", np.zeros((0, 4, 2), np.float32))
    with pytest.raises(ValueError, match="at least one pixel"):
        sampling.sample_guidance(np.zeros((0, 5, 2), np.float32))
    for max_flow in ("5", np.array([1, 2]), 0, float("nan"), True):
        with pytest.raises(ValueError, match="max_flow must be a positive number"):
            flow_lib.flow_to_color(np.ones((2, 2, 2), np.float32), max_flow)
    # The largest float32 flow keeps its colour (no overflow into "out of range").
    big = np.full((1, 1, 2), [3e38, 0], np.float32)
    assert (flow_lib.flow_to_color(big) == flow_lib.flow_to_color(big / 1e8)).all()


def test_a_flo_file_is_written_only_under_a_flo_name(tmp_path):
    with pytest.raises(ValueError, match="path must name a .flo file"):
        formats.write_flo(tmp_path / "x.png", np.ones((2, 2, 2), np.float32))
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("height, width, points, message", [
    (-1, 5, [[1, 1]], "height must be a whole number"), (5.5, 5, [[1, 1]], "height must be"),
    ("5", 5, [[1, 1]], "height must be"), (5, True, [[1, 1]], "width must be"),
    (5, 5, [["1", "1"]], "points must be a real-valued"),
    (5, 5, np.array([[True, False]]), "points must be a real-valued"),
])
def test_a_sparse_map_checks_its_size_and_point_types(height, width, points, message):
    with pytest.raises(ValueError, match=message):
        sampling.sparse_from_points(points, [[1, 1]], height, width)


def _pairs(image=None, flow=None, valid=None):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (32, 32, 3)).astype(np.uint8) if image is None else image
    flow = rng.normal(size=(32, 32, 2)).astype(np.float32) if flow is None else flow
    return [(image, flow, np.ones((32, 32), bool) if valid is None else valid)]


def _zero(image, points, vectors):
    return np.zeros(image.shape[:2] + (2,), np.float32)


@pytest.mark.parametrize("pair, message", [
    (dict(image=np.ones((32, 32, 3), np.float32)), "pair 0: the image must be uint8"),
    (dict(image=np.full((32, 32, 3), 300)), "pair 0: the image must be uint8"),
    (dict(flow=np.ones((32, 32), np.float32)), "pair 0: the flow must be float"),
    (dict(valid=np.ones((16, 16), bool)), "pair 0: valid must have the image's shape"),
    (dict(flow=np.full((32, 32, 2), np.nan, np.float32)), "NaN or infinite vectors at valid"),
])
def test_evaluate_refuses_a_pair_it_would_score_wrongly(pair, message):
    with pytest.raises(ValueError, match=message):
        benchmark.evaluate({"zero": _zero}, _pairs(**pair), ks=(1,), progress=False)


def test_evaluate_scores_a_pair_whose_invalid_pixels_hold_nan():
    flow = np.ones((32, 32, 2), np.float32)
    flow[:4] = np.nan
    valid = np.ones((32, 32), bool)
    valid[:4] = False
    result = benchmark.evaluate({"zero": _zero}, _pairs(flow=flow, valid=valid), ks=(1,),
                                progress=False)
    assert all(row["epe"] == pytest.approx(np.sqrt(2)) for row in result["rows"])


def test_evaluate_checks_its_counts_strategies_methods_and_method_files(tmp_path):
    with pytest.raises(ValueError, match="ks must be whole numbers of guides; got 1.7"):
        benchmark.evaluate({"zero": _zero}, _pairs(), ks=(1.7,), progress=False)
    with pytest.raises(ValueError, match="not one string"):
        benchmark.evaluate({"zero": _zero}, _pairs(), strategies="uniform", progress=False)

    class WrongBatch:
        def propagate_batch(self, image, guidance):
            return np.zeros((1, 8, 8, 2), np.float32)

    with pytest.raises(ValueError, match=r"Method 'wrong' on pair 0: propagate_batch returned "
                                         r"flow of shape \(1, 8, 8, 2\)"):
        benchmark.evaluate({"zero": _zero, "wrong": WrongBatch()}, _pairs(), ks=(1, 5),
                           progress=False)

    def picky(image, points, vectors):  # an outside method's own refusal
        raise RuntimeError("need at least 3 points")

    with pytest.raises(ValueError, match=r"Method 'picky' on pair 0 failed: RuntimeError: need "
                                         r"at least 3 points"):
        benchmark.evaluate({"zero": _zero, "picky": picky}, _pairs(), ks=(1,), progress=False)
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module\n")
    with pytest.raises(ValueError, match="broken.py could not be loaded: ModuleNotFoundError"):
        benchmark.load_method(str(broken))


def test_animation_arrows_and_fade_are_checked(propagator, tmp_path):
    from cmp_tf.apps import animate

    image = np.zeros((64, 64, 3), np.uint8)
    for arrows in ([10, 10, 5, 0], [[10, 10, 5]], [], [["a", "b", "c", "d"]]):
        with pytest.raises(ValueError, match=r"arrows must be \[K, 4\] numbers"):
            animate.predict_flow(propagator, image, arrows)
    with pytest.raises(ValueError, match="--fade must be True or False; got 'no'"):
        animate.run(None, str(tmp_path / "none.png"), "10,10,5,0", fade="no")
    with pytest.raises(ValueError, match=r"arrows item 2 holds values that are not finite "
                                         r"numbers: \[10.0, 10.0, nan, 0.0\]"):
        animate.predict_flow(propagator, image, [[5, 5, 1, 0], [10, 10, np.nan, 0]])
    with pytest.raises(ValueError, match=r"image must be an \[H, W, 3\] RGB array; got shape "
                                         r"\(64,\)"):
        animate.predict_flow(propagator, image[0, :, 0], [[5, 5, 1, 0]])
    with pytest.raises(ValueError, match=r"^image must be uint8 \(0..255\); got dtype int64"):
        animate.animate(propagator, image.tolist(), [[5, 5, 1, 0]], frames=2)


def test_one_bad_set_of_many_is_named_and_numpy_booleans_are_booleans(propagator):
    from cmp_tf.runtime import Propagator

    image = np.zeros((32, 32, 3), np.uint8)
    good = ([[1, 1]], [[1, 0]])
    with pytest.raises(ValueError, match=r"guidance\[2\]: vectors must be finite"):
        propagator.propagate_batch(image, [good, good, ([[1, 1]], [[np.nan, 0]])])
    flow = Propagator(fade=np.False_).propagate(image, *good)  # as fade=False
    np.testing.assert_array_equal(flow, Propagator(fade=False).propagate(image, *good))


def test_a_keras_propagator_in_a_forked_process_says_so_rather_than_waits(propagator):
    """TensorFlow does not survive fork(): a DataLoader's fork-started worker waited for ever."""
    import select

    image, points, vectors = np.zeros((32, 32, 3), np.uint8), [[1, 1]], [[1, 0]]
    propagator.propagate(image, points, vectors)  # loaded and run in this process
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the forked worker
        try:
            propagator.propagate(image, points, vectors)
            said = b"ran"
        except RuntimeError as error:
            said = str(error).encode()
        except BaseException as error:  # noqa: BLE001  reported to the test
            said = repr(error).encode()
        os.write(write, said[:2000])
        os._exit(0)
    os.close(write)
    ready, _, _ = select.select([read], [], [], 60)
    if not ready:
        os.kill(child, 9)
    os.waitpid(child, 0)
    said = os.read(read, 2000).decode() if ready else "no answer in 60 s"
    os.close(read)
    assert "before this one was forked from it" in said and "'spawn'" in said, said


def test_annotation_clicks_zoom_and_threshold_are_checked(propagator, tmp_path):
    from cmp_tf.apps import annotate

    image = np.zeros((64, 64, 3), np.uint8)
    for zoom_size in (0, 1.5, 5, "64"):
        with pytest.raises(ValueError, match=r"zoom_size=.* must be a whole number of pixels "
                                             r"in \[32, 2048\]"):
            annotate.annotate(propagator, image, [[30, 30]], [[5, 5]], zoom_size=zoom_size)
    with pytest.raises(ValueError, match=r"positive must be \[N, 2\] \(x, y\) clicks; got "
                                         r"int64 \(3,\)"):
        annotate.annotate(propagator, image, [60, 45, 3])
    with pytest.raises(ValueError, match="negative must be"):
        annotate.annotate(propagator, image, [[30, 30]], [["a", "b"]])
    assert annotate.annotate(propagator, image, [30, 30]).shape == (64, 64)  # one (x, y) pair
    import cv2

    cv2.imwrite(str(tmp_path / "frame.png"), image)
    with pytest.raises(ValueError, match=r"--threshold='0.5' must lie in \(0, 1\)"):
        annotate.run(None, str(tmp_path / "frame.png"), "30,30", threshold="0.5")


# A sitecustomize that makes Python a lite install (`[lite]`): what that leaves out is not
# found (`import tensorflow`: "No module named 'tensorflow'"; importlib's find_spec: None)
_LITE = """import sys

LACKS = {"tensorflow", "keras", "ml_collections", "scipy", "matplotlib", "tensorboard",
         "tf2onnx", "onnx", "apache_beam"}


class Without:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] not in LACKS:
            return self.finder.find_spec(name, path, target)

    def __getattr__(self, name):
        return getattr(self.finder, name)


sys.meta_path[:] = [Without(finder) for finder in sys.meta_path]
"""


@pytest.mark.parametrize("command", [
    "Propagator()",  # the shipped .keras model, the apps' default
    "python -m export", "python -m cmp_tf.convert", "python -m cmp_tf.data.ingest --videos=x",
    "python -m cmp_tf.data.synthetic --out={tmp}/set", "python train.py", "python evaluate.py"])
def test_what_needs_tensorflow_says_so_in_one_line_without_it(command, tmp_path):
    """The lite install has no TensorFlow or Keras: the shipped .keras model (the apps'
    default), and the commands that export, convert, ingest, write data, train or evaluate,
    ended in a ModuleNotFoundError traceback; each is one line naming what to install."""
    import subprocess
    import sys

    (tmp_path / "sitecustomize.py").write_text(_LITE)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if command.startswith("python "):
        args = command.format(tmp=tmp_path).split()[1:]
        what = " ".join(word for word in command.split() if not word.startswith("--"))
    else:  # the API: its ValueError alone, as the apps print it
        args = ["-c", "import sys\nfrom cmp_tf.runtime import Propagator\ntry:\n"
                f"    {command}\nexcept ValueError as error:\n    sys.exit(str(error))"]
        what = os.path.join(root, "cmp_tf", "pretrained", "default", "model.keras")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{root}")
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300,
                          cwd=root, env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    line, = done.stderr.splitlines()
    assert line.startswith(f"{what} needs TensorFlow and Keras, which this install lacks (No "
                           "module named '"), line
    assert line.endswith('pip install -r requirements.txt, or pip install ".[train]" from the '
                         "checkout."), line
    if not command.startswith("python "):
        assert "this install runs exported .tflite and .onnx files: pass one" in line, line


@pytest.mark.parametrize("width", [16, 17])
def test_a_point_on_the_images_border_is_taken_alike_at_any_width(width):
    """NumPy's round takes a half to the even pixel: x = W - 0.5 was refused at an even width
    and kept at an odd one."""
    image = np.zeros((8, width, 3), np.uint8)
    with pytest.raises(ValueError, match="points must round to pixels"):
        sampling.check_guidance(image, [[width - 0.5, 2]], [[1, 0]])
    sampling.check_guidance(image, [[-0.5, 2], [width - 0.51, 2]], [[1, 0], [1, 0]])
    sparse = sampling.sparse_from_points([[2.5, 3.5]], [[1, 0]], 8, width)
    assert sparse[4, 3, 2] == 1  # halves round up, both axes


@pytest.mark.parametrize("scale", [2.0, 4.0, 1.5, 128 / 96, 0.5])
def test_a_mirrored_photo_gets_its_guides_at_mirrored_working_pixels(scale):
    """Halves rounded up put every guide of an image enlarged twice on the later of its two
    pixels, a quarter pixel right and down: the mirrored photo's guides landed elsewhere, and
    its flow was up to 3.5 px from the mirrored flow."""
    from cmp_tf.runtime import working_pixels

    width, height = 64, 48
    fit_w, fit_h = round(width * scale), round(height * scale)
    points = np.stack(np.meshgrid(np.arange(width), np.arange(height)), -1).reshape(-1, 2)
    mirrored = np.stack([width - 1 - points[:, 0], height - 1 - points[:, 1]], 1)
    sx, sy = fit_w / width, fit_h / height
    at = working_pixels(points, (sx, sy), fit_h, fit_w)
    at_mirrored = working_pixels(mirrored, (sx, sy), fit_h, fit_w)
    np.testing.assert_array_equal(at_mirrored, [fit_w - 1, fit_h - 1] - at)
    exact = (points + 0.5) * [sx, sy] - 0.5
    assert np.abs(at - exact).max() <= 0.5 + 1e-9  # the nearest pixel, ties aside
    # a point between two pixels is on the later one, as the guidance check takes it
    np.testing.assert_array_equal(working_pixels([[80.5, 2.5]], (1, 1), 10, 100), [[81, 3]])


def test_a_mirrored_enlarged_photo_gives_the_mirrored_flow(propagator):
    import cv2

    rng = np.random.default_rng(6)
    # smooth: on raw noise the network itself is asymmetric (0.2 px at 64^2, enlarged)
    image = cv2.GaussianBlur((rng.random((64, 64, 3)) * 255).astype(np.uint8), (0, 0), 2)
    points = np.stack([rng.integers(0, 64, 12), rng.integers(0, 64, 12)], -1).astype(np.float32)
    vectors = rng.normal(0, 5, (12, 2)).astype(np.float32)
    flow = propagator.propagate(image, points, vectors)
    flipped = points.copy()
    flipped[:, 0] = 63 - flipped[:, 0]
    back = propagator.propagate(image[:, ::-1].copy(), flipped, vectors * [-1, 1])
    asymmetry = np.abs(flow - back[:, ::-1] * [-1, 1])
    assert asymmetry.mean() < 0.03 and asymmetry.max() < 0.5, (asymmetry.mean(), asymmetry.max())


def test_a_small_photo_is_enlarged_alike_on_both_sides(propagator):
    """64 x 128 ran at 128 x 128: the rows stretched twice, and a guide's motion reached half
    as far along them (the flow halved 28 px from the guide down, 53 px across)."""
    assert propagator.working_size(64, 128) == (128, 256)
    assert propagator.working_size(80, 200) == (128, 320)
    assert propagator.working_size(50, 1) == (128, 128)  # too long to enlarge within 2048 px
    from cmp_tf import runtime

    unbounded = runtime.Propagator(fade=False)
    unbounded.max_input_side = None  # as a model whose fills span any size
    assert unbounded.working_size(8, 2000) == (128, 2016)  # not 128 x 32000
    image = np.full((64, 128, 3), 120, np.uint8)
    flow = propagator.propagate(image, [[64, 32]], [[4, 0]])
    across, down = flow[32, 64:, 0], flow[32:, 64, 0]
    # at equal distances from the guide, along the row and down the column
    np.testing.assert_allclose(across[:32], down, atol=0.1)
