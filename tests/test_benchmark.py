"""The propagation benchmark: guidance orders, metrics, reports, the runtime Propagator."""
import json
import os
import sys

import numpy as np
import pytest

from cmp_tf.evaluation import baselines
from cmp_tf.evaluation import benchmark
from cmp_tf.evaluation import pairs as pairs_lib
from cmp_tf.evaluation import report as report_lib
from tests.helpers import load_config


def _scene(seed=0, size=64):
    """A textured square moving over a moving background: two regions, known edges."""
    from cmp_tf.data import synthetic

    rng = np.random.default_rng(seed)
    background, square = rng.integers(-4, 5, 2), rng.integers(-8, 9, 2)
    image, _, flow = synthetic.moving_square(size, size // 2, tuple(background), tuple(square),
                                             seed=seed)
    return image, flow, np.ones(flow.shape[:2], bool)


def _oracle(shift=(0.0, 0.0)):
    """A method that knows the reference flow (set per pair) and adds `shift` to it."""

    class Oracle:
        flow = None

        def propagate(self, image, points, vectors):
            return self.flow + np.float32(shift)

    return Oracle()


def _evaluate_with(method_flow_pairs, **kwargs):
    oracle = _oracle(kwargs.pop("shift", (0.0, 0.0)))

    def pairs():
        for image, flow, valid in method_flow_pairs:
            oracle.flow = flow
            yield image, flow, valid

    methods = {"zero": lambda image, p, v: np.zeros(image.shape[:2] + (2,), np.float32),
               "oracle": oracle}
    return benchmark.evaluate(methods, pairs(), progress=False, **kwargs)


def test_epe_is_zero_for_the_reference_and_the_shift_for_a_shifted_copy():
    pairs = pairs_lib.generated_pairs(2, size=48)
    exact = _evaluate_with(pairs, ks=(1, 5))
    shifted = _evaluate_with(pairs, ks=(1, 5), shift=(3.0, 4.0))
    for row in exact["rows"]:
        if row["method"] == "oracle":
            assert row["epe"] == pytest.approx(0.0, abs=1e-6)
            assert row["relative"] == pytest.approx(0.0, abs=1e-6)
    for row in shifted["rows"]:
        if row["method"] == "oracle":
            for key in ("epe", "epe_near", "epe_far"):
                assert row[key] == pytest.approx(5.0, rel=1e-5)
    assert {(r["strategy"], r["k"]) for r in exact["rows"]} == {
        (s, k) for s in ("watershed", "uniform") for k in (1, 5)}


def test_relative_error_is_per_pair_over_the_zero_flow_error():
    image, flow, valid = _scene()
    result = _evaluate_with([(image, flow, valid)], ks=(1,), shift=(1.0, 0.0))
    zero_epe = np.linalg.norm(flow, axis=-1).mean()
    oracle = [r for r in result["rows"] if r["method"] == "oracle"]
    assert oracle[0]["relative"] == pytest.approx(1.0 / zero_epe, rel=1e-4)


def test_a_nearly_still_pair_is_left_out_of_the_relative_error():
    """A pair moving less than MIN_ZERO_EPE was divided by its near-zero zero-flow error: one
    still clip (0.04 px here) made a 1 px error count as 24 times the motion and swamped the
    mean over pairs."""
    image, flow, valid = _scene()
    still = np.full_like(flow, 0.03)  # about 0.04 px everywhere
    assert np.linalg.norm(still, axis=-1).mean() < benchmark.MIN_ZERO_EPE
    result = _evaluate_with([(image, flow, valid), (image, still, valid)], ks=(1,),
                            shift=(1.0, 0.0))
    zero_epe = np.linalg.norm(flow, axis=-1).mean()
    for row in result["rows"]:
        assert row["pairs"] == 1  # the still pair scored in the EPE, not in the ratios
        if row["method"] == "oracle":
            assert row["relative"] == pytest.approx(1.0 / zero_epe, rel=1e-4)
            assert row["epe"] == pytest.approx(1.0, rel=1e-5)
    assert result["still_pairs"] == 1  # and the report says so
    assert "1 of the 2 pairs move less than 0.1 px on average (zero-flow EPE) and are left " \
        "out of the relative errors." in report_lib.markdown_table(result)


def test_a_method_editing_its_inputs_moves_no_other_methods_guides():
    seen = []

    def vandal(image, points, vectors):
        image[:] = 0
        points -= 0.5
        vectors *= 0
        return np.zeros(image.shape[:2] + (2,), np.float32)

    def witness(image, points, vectors):
        seen.append((image.max(), points.copy(), vectors.copy()))
        return np.zeros(image.shape[:2] + (2,), np.float32)

    image, flow, valid = _scene()
    methods = {"zero": lambda image, p, v: np.zeros(image.shape[:2] + (2,), np.float32),
               "vandal": vandal, "witness": witness}
    result = benchmark.evaluate(methods, [(image, flow, valid)], ks=(3,), strategies=("uniform",),
                                keep_examples=1, progress=False)
    (brightest, points, vectors), = seen
    assert brightest == image.max() and (points == np.round(points)).all()
    np.testing.assert_array_equal(vectors, flow[points[:, 1].astype(int), points[:, 0].astype(int)])
    np.testing.assert_array_equal(result["examples"][0]["points"], points)


@pytest.mark.parametrize("output, message", [
    (lambda shape: np.zeros(shape, np.complex64), "returned flow of dtype complex64"),
    (lambda shape: np.zeros(shape, bool), "returned flow of dtype bool"),
    (lambda shape: np.full(shape, 1e30), "returned motion beyond"),
])
def test_a_methods_flow_that_is_no_motion_is_refused_naming_it(output, message):
    image, flow, valid = _scene()
    methods = {"zero": lambda image, p, v: np.zeros(image.shape[:2] + (2,), np.float32),
               "odd": lambda image, p, v: output(image.shape[:2] + (2,))}
    with pytest.raises(ValueError, match=rf"Method 'odd' on pair 0 {message}"):
        benchmark.evaluate(methods, [(image, flow, valid)], ks=(1,), progress=False)
    methods["odd"] = lambda image, p, v: sys.exit(3)
    with pytest.raises(ValueError, match=r"Method 'odd' on pair 0 failed: SystemExit: 3"):
        benchmark.evaluate(methods, [(image, flow, valid)], ks=(1,), progress=False)


@pytest.mark.parametrize("strategy", ["watershed", "uniform"])
def test_smaller_k_guidance_is_a_prefix_of_larger_k(strategy):
    image, flow, valid = _scene()
    xy, found = benchmark.guidance_order(flow, valid, strategy, 40, np.random.default_rng(3))
    again, _ = benchmark.guidance_order(flow, valid, strategy, 40, np.random.default_rng(3))
    np.testing.assert_array_equal(xy, again)  # fixed seed: the same points
    assert len(xy) == 40 and len({tuple(p) for p in xy}) == 40  # distinct pixels
    if strategy == "watershed":
        assert 1 <= found < 40  # a square on a background: a couple of regions, then fill
    calls = []

    def recording(image, points, vectors):
        calls.append(points.copy())
        return np.zeros(image.shape[:2] + (2,), np.float32)

    benchmark.evaluate({"zero": recording}, [(image, flow, valid)], ks=(1, 5, 25),
                       strategies=(strategy,), progress=False)
    assert [len(points) for points in calls] == [1, 5, 25]
    for small, large in zip(calls, calls[1:]):  # every method is given one ordering's heads
        np.testing.assert_array_equal(small, large[:len(small)])


def _four_squares(size=96):
    """Four squares moving apart on a still background: watershed middles on both halves."""
    flow = np.zeros((size, size, 2), np.float32)
    for i, (r, c) in enumerate([(8, 8), (8, 60), (60, 8), (60, 60)]):
        flow[r:r + 28, c:c + 28] = (2 + i, -1 - i)
    return flow


def test_watershed_guidance_never_lands_on_an_invalid_pixel():
    """Watershed middles were kept wherever they fell: on pixels whose reference flow failed
    its check, a guide handed the method a vector the pair does not know."""
    from cmp_tf.data import sampling

    flow = _four_squares()
    valid = np.zeros(flow.shape[:2], bool)
    valid[:, :48] = True  # the right half's reference flow is unknown
    for seed in range(5):
        rows, cols = sampling.watershed_points(flow, benchmark.NMS_KS,
                                               np.random.default_rng(seed))
        assert (cols >= 48).any()  # the sampler alone would guide the unknown half
        xy, found = benchmark.guidance_order(flow, valid, "watershed", 5,
                                             np.random.default_rng(seed))
        assert found >= 1
        assert valid[xy[:, 1].astype(int), xy[:, 0].astype(int)].all()


def test_asking_for_every_valid_pixel_gives_each_once():
    """The fill after the watershed points drew among all valid pixels, the points already
    taken included: the same pixel twice, and K guides that were fewer than K."""
    flow = _four_squares()
    valid = np.zeros(flow.shape[:2], bool)
    valid[10:40, 10:40] = True  # 900 pixels around the first square's middle
    xy, found = benchmark.guidance_order(flow, valid, "watershed", 900, np.random.default_rng(0))
    assert found >= 1
    assert {(int(x), int(y)) for x, y in xy} == {(c, r) for r, c in np.argwhere(valid)}
    assert len(xy) == 900


def test_watershed_fill_prefers_region_middles_to_motion_edges():
    image, flow, valid = _scene(size=96)
    from cmp_tf.data import sampling

    distance = sampling.distance_to_motion_edges(flow)
    xy, found = benchmark.guidance_order(flow, valid, "watershed", 400,
                                         np.random.default_rng(0))
    filled = xy[found:].astype(int)
    uniform, _ = benchmark.guidance_order(flow, valid, "uniform", 400, np.random.default_rng(0))
    assert distance[filled[:, 1], filled[:, 0]].mean() > distance[
        uniform[:, 1].astype(int), uniform[:, 0].astype(int)].mean()


def test_k_beyond_the_valid_pixels_and_bad_ks_are_refused():
    image, flow, valid = _scene(size=32)
    valid = np.zeros_like(valid)
    valid[:2, :2] = True
    with pytest.raises(ValueError, match="K=5 .* only 4 valid pixels"):
        benchmark.guidance_order(flow, valid, "uniform", 5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="ks must be"):
        benchmark.check_ks((5, 1))
    with pytest.raises(ValueError, match="strategy"):
        benchmark.guidance_order(flow, valid, "grid", 1, np.random.default_rng(0))


def test_empty_data_and_missing_zero_are_refused():
    zero = {"zero": lambda image, p, v: np.zeros(image.shape[:2] + (2,), np.float32)}
    with pytest.raises(ValueError, match="empty"):
        benchmark.evaluate(zero, [], progress=False)
    with pytest.raises(ValueError, match="'zero'"):
        benchmark.evaluate({"x": zero["zero"]}, [_scene()], progress=False)


def test_a_pair_with_fewer_valid_pixels_than_guides_is_named():
    zero = {"zero": lambda image, p, v: np.zeros(image.shape[:2] + (2,), np.float32)}
    image, flow, valid = _scene()
    sparse = np.zeros_like(valid)
    sparse[:2, :2] = True
    with pytest.raises(ValueError, match=r"Pair 1: K=5 guidance points asked, but the pair "
                                         r"has only 4 valid pixels"):
        benchmark.evaluate(zero, [_scene(), (image, flow, sparse)], ks=(1, 5), progress=False)


def test_a_method_returning_the_wrong_shape_is_named():
    methods = {"zero": lambda image, p, v: np.zeros((3, 3, 2), np.float32)}
    with pytest.raises(ValueError, match="shape"):
        benchmark.evaluate(methods, [_scene()], ks=(1,), progress=False)


def test_sample_pairs_spreads_over_the_stream_deterministically():
    picked = pairs_lib.sample_pairs(iter(range(1000)), 10, seed=1)
    assert picked == pairs_lib.sample_pairs(iter(range(1000)), 10, seed=1)
    assert len(picked) == 10 and picked == sorted(picked) and picked[-1] > 500
    assert pairs_lib.sample_pairs(iter(range(3)), 10) == [0, 1, 2]


def test_report_files_and_outside_methods(tmp_path):
    method_file = tmp_path / "shift.py"
    method_file.write_text("import numpy as np\n\ndef propagate(image, points, vectors):\n"
                           "    return np.ones(image.shape[:2] + (2,), np.float32)\n")
    methods = {"zero": lambda image, p, v: np.zeros(image.shape[:2] + (2,), np.float32),
               "shift": benchmark.load_method(str(method_file))}
    result = benchmark.evaluate(methods, pairs_lib.generated_pairs(2, size=48), ks=(1, 10),
                                progress=False, keep_examples=1)
    text = report_lib.write_report(result, str(tmp_path / "out"))
    assert "| watershed | 10" in text and "shift" in text
    for name in ("results.md", "results.json", "relative_epe.png", "panels.png"):
        assert os.path.getsize(tmp_path / "out" / name) > 0
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(saved["rows"]) == 2 * 2 * 2
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(ValueError, match="defines no function propagate"):
        benchmark.load_method(str(bad))


@pytest.mark.parametrize("name", ["bilateral", "guided_filter", "flat_image"])
def test_the_methods_the_ablation_scored_load_and_propagate(name):
    """docs/methods/*.py, whose figures docs/ablation.md gives, still run as it says."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    propagate = benchmark.load_method(os.path.join(root, "docs", "methods", f"{name}.py"))
    image, _, _ = _scene()
    points = np.array([[10.0, 12.0], [50.0, 40.0], [30.0, 30.0]], np.float32)
    vectors = np.array([[2.0, -1.0], [-3.0, 0.5], [0.0, 0.0]], np.float32)
    flow = propagate(image, points, vectors)
    assert flow.shape == image.shape[:2] + (2,) and np.isfinite(flow).all()
    assert np.abs(flow[12, 10] - vectors[0]).max() < 1.0  # near its guide, its guide's vector


def test_scored_pairs_names_generated_scenes_as_evaluate_does():
    config = load_config("propagation")
    pairs, described = pairs_lib.scored_pairs(config, False, ["generated"], 2, seed=3)
    assert described == "generated scenes" and len(pairs) == 2
    expected = pairs_lib.generated_pairs(2, seed=3)
    for got, want in zip(pairs, expected):
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def test_generated_scenes_scored_against_a_teachers_flow_keep_their_frames():
    config = load_config("propagation")
    pairs, described = pairs_lib.scored_pairs(config, False, ["generated"], 2, seed=3,
                                              reference="dis_medium")
    assert described == "generated scenes, dis_medium flow"
    for (image, flow, valid), (want_image, exact, want_valid) in zip(
            pairs, pairs_lib.generated_pairs(2, seed=3)):
        np.testing.assert_array_equal(image, want_image)
        np.testing.assert_array_equal(valid, want_valid)
        error = np.linalg.norm(flow - exact, axis=-1)
        assert 0.0 < np.median(error) < 0.5  # DIS's flow: close, not the exact one
    with pytest.raises(ValueError, match=r"reference='dis': 'exact' or a teacher, one of "
                                         r"dis_ultrafast"):
        pairs_lib.scored_pairs(config, False, ["generated"], 1, reference="dis")
    with pytest.raises(ValueError, match=r"reference='deepflow' is for generated scenes"):
        pairs_lib.scored_pairs(config, False, ["clips/"], 1, reference="deepflow")


def test_a_teacher_that_returns_nan_flow_is_named_not_scored(monkeypatch):
    from cmp_tf.data import teacher

    def nan_on_the_second_scene():
        calls = []

        def estimate(first, second):
            calls.append(1)
            flow = np.zeros(first.shape[:2] + (2,), np.float32)
            flow[5, 7, 1] = np.nan if len(calls) == 2 else 0.0
            return flow
        return estimate

    monkeypatch.setitem(teacher.OPENCV_ESTIMATORS, "flaky", nan_on_the_second_scene)
    with pytest.raises(ValueError, match=r"reference='flaky' on generated scene 1 gave flow of "
                                         r"shape \(128, 128, 2\) with 1 non-finite values"):
        pairs_lib.scored_pairs(load_config("propagation"), False, ["generated"], 3,
                               reference="flaky")


def _docs_method(name):
    """(propagate of docs/methods/<name>.py, a scene's image, two guides' points and vectors)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    propagate = benchmark.load_method(os.path.join(root, "docs", "methods", f"{name}.py"))
    points = np.array([[10.0, 12.0], [50.0, 40.0]], np.float32)
    vectors = np.array([[2.0, -1.0], [-3.0, 0.5]], np.float32)
    return propagate, _scene()[0], points, vectors


def test_the_flat_image_method_reads_the_guidance_and_not_the_image():
    propagate, image, points, vectors = _docs_method("flat_image")
    flow = propagate(image, points, vectors)
    np.testing.assert_array_equal(flow, propagate(255 - image, points, vectors))
    assert not np.array_equal(flow, propagate(image, points, -vectors))


def test_the_shipped_method_is_the_shipped_model_reading_the_photo():
    from cmp_tf.runtime import Propagator

    propagate, image, points, vectors = _docs_method("shipped")
    flow = propagate(image, points, vectors)
    np.testing.assert_array_equal(flow, Propagator().propagate(image, points, vectors))
    assert not np.array_equal(flow, propagate(255 - image, points, vectors))


def test_the_region_oracle_interpolates_each_motion_region_apart():
    """docs/methods/oracle_regions.py's bound: guides on two sides of a motion edge give each
    side exactly its own motion, where linear interpolation blends them across the edge."""
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(
        "oracle_regions", os.path.join(root, "docs", "methods", "oracle_regions.py"))
    oracle_regions = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(oracle_regions)
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8)
    flow = np.zeros((48, 64, 2), np.float32)
    flow[:, :32] = (2.0, 0.0)
    flow[:, 32:] = (-1.0, 1.0)
    regions = oracle_regions.motion_regions(flow)
    assert len(np.unique(regions)) == 2 and regions[0, 0] != regions[0, -1]
    points = np.array([[4, 4], [20, 40], [28, 10], [36, 6], [60, 44], [50, 24]], np.float32)
    vectors = flow[points[:, 1].astype(int), points[:, 0].astype(int)]
    oracle = oracle_regions.RegionOracle([(image, flow, np.ones((48, 64), np.uint8))])
    np.testing.assert_allclose(oracle(image, points, vectors), flow, atol=1e-5)
    assert np.abs(baselines.linear(image, points, vectors) - flow).max() > 0.5


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from cmp_tf import models
    from tests.helpers import load_config

    config = load_config("cpu_bins")
    path = tmp_path_factory.mktemp("model") / "model.keras"
    models.build_cmp(config).save(path)
    return str(path)


def test_propagator_answers_at_the_callers_size(saved_model):
    from cmp_tf import runtime

    propagator = runtime.Propagator(saved_model)
    image = np.random.default_rng(0).integers(0, 255, (45, 70, 3), dtype=np.uint8)
    points = np.array([[10, 5], [60, 40]], np.float32)
    vectors = np.array([[3, -2], [-1, 4]], np.float32)
    flow = propagator.propagate(image, points, vectors)
    assert flow.shape == (45, 70, 2) and flow.dtype == np.float32
    for side in propagator.working_size(45, 70) + propagator.working_size(1000, 333):
        assert side % propagator.multiple == 0 and side >= propagator.minimum
    assert propagator.working_size(1000, 333) == (992, 320)  # nearest multiples of 32
    # halves up on both sides, the aspect kept (round() took 4.5 down and 5.5 up: 128 x 192)
    assert propagator.working_size(144, 176) == (160, 192)
    # An untrained dense-prior model reads out the nearest guidance: exact at the points.
    np.testing.assert_allclose(flow[5, 10], [3, -2], atol=0.3)
    batch = propagator.propagate_batch(image, [(points, vectors), (points[:1], vectors[:1])])
    assert batch.shape == (2, 45, 70, 2)
    np.testing.assert_allclose(batch[0], flow, atol=1e-4)
    small = runtime.Propagator(saved_model, max_side=32).propagate(image, points, vectors)
    assert small.shape == (45, 70, 2)
    np.testing.assert_allclose(small[5, 10], [3, -2], atol=0.6)


def test_a_guide_is_fed_at_its_scaled_pixel_with_each_axis_scaled_apart(saved_model):
    """Where the network's size stretches the image unevenly (100 x 300 runs at 128 x 160:
    x 0.53, y 1.28), x and y take their own scales; swapped, a guide near the far corner was
    fed at another pixel with the other axis's scale (the nearest-fill model hid it: the
    flow it gives back is scaled back with the same swap)."""
    from cmp_tf import runtime

    propagator = runtime.Propagator(saved_model, max_side=160)
    assert propagator.working_size(100, 300) == (128, 160)
    fed = []

    def runner(inputs):  # every pixel moves as the one guide says
        fed.append(inputs["sparse"])
        sparse = inputs["sparse"]
        vector = sparse[..., :2].sum(axis=(1, 2), keepdims=True)
        return {"flow": np.broadcast_to(vector, sparse.shape[:3] + (2,)).copy()}

    propagator._network.runner = runner
    image = np.random.default_rng(0).integers(0, 255, (100, 300, 3), dtype=np.uint8)
    flow = propagator.propagate(image, np.array([[295.0, 95.0]]), np.array([[6.0, -3.0]]))
    sx, sy = 160 / 300, 128 / 100
    (y,), (x,) = np.nonzero(fed[0][0, ..., 2])
    # Pixel centres map as OpenCV's resize maps them: (p + 0.5) * s - 0.5, rounded.
    assert (x, y) == (round(295.5 * sx - 0.5), round(95.5 * sy - 0.5)) == (157, 122)
    np.testing.assert_allclose(fed[0][0, y, x, :2], [6 * sx, -3 * sy], rtol=1e-6)
    assert flow.shape == (100, 300, 2)
    np.testing.assert_allclose(flow[95, 295], [6, -3], rtol=1e-5)


def test_ten_guidance_sets_run_in_chunks_and_each_equals_its_own_call(saved_model):
    """propagate_batch runs BATCH sets per forward pass; a chunk one short dropped a set in
    every chunk, so ten sets came back as nine, misaligned with their guidance."""
    from cmp_tf import runtime

    propagator = runtime.Propagator(saved_model)
    image = np.random.default_rng(1).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    sets = [(np.array([[3.0 + 5 * i, 4.0 + 3 * i], [50.0, 35.0 - i]]),
             np.array([[i - 5.0, 2.0], [1.0, -i / 2]])) for i in range(runtime.BATCH + 2)]
    batch = propagator.propagate_batch(image, sets)
    assert batch.shape == (len(sets), 40, 56, 2)
    for flow, (points, vectors) in zip(batch, sets):
        np.testing.assert_allclose(flow, propagator.propagate(image, points, vectors), atol=1e-4)


def test_large_images_run_fewer_guidance_sets_per_pass(saved_model, monkeypatch):
    """Eight sets of a 4K image went through at once: 6 GB."""
    from cmp_tf import runtime

    propagator = runtime.Propagator(saved_model)
    image = np.random.default_rng(1).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    sets = [(np.array([[3.0 + i, 4.0]]), np.array([[i - 2.0, 1.0]])) for i in range(5)]
    whole = propagator.propagate_batch(image, sets)
    passes, forward = [], runtime.Network.__call__
    monkeypatch.setattr(runtime.Network, "__call__", lambda network, images, sparse:
                        passes.append(images.shape) or forward(network, images, sparse))
    propagator.propagate_batch(image, sets)
    (count, height, width, _), = passes  # all five in one pass: within the budget
    assert count == 5
    monkeypatch.setattr(runtime, "BATCH_PIXELS", 2 * height * width)  # two sets a pass
    np.testing.assert_allclose(propagator.propagate_batch(image, sets), whole, atol=1e-5)
    assert [shape[0] for shape in passes[1:]] == [2, 2, 1]


def test_a_keras_model_runs_one_traced_graph_for_every_size_as_its_eager_call_does():
    """The Keras runner traces the forward pass once, with free sizes: other sizes and batches
    reuse it and give the eager call's flow; a size the CMP cannot take is still refused
    (the graph checks nothing itself); a switched fade retraces, so it takes effect; a
    service warms it up before its first request."""
    from cmp_tf import runners
    from cmp_tf import runtime
    from cmp_tf.models import heads

    network = runtime.Network(None)  # the shipped model
    runner = network.runner
    rng = np.random.default_rng(0)

    def inputs(batch, height, width):
        sparse = np.zeros((batch, height, width, 3), np.float32)
        sparse[:, 40, 50], sparse[:, 100, 20] = [4, -2, 1], [0, 3, 1]
        return rng.uniform(0, 255, (batch, height, width, 3)).astype(np.float32), sparse

    for batch, height, width in [(1, 128, 160), (3, 160, 128), (2, 128, 128)]:
        image, sparse = inputs(batch, height, width)
        eager = runner.model({"image": image, "sparse": sparse}, training=False)
        # Graph rewrites reorder float sums: below a thousandth of a pixel.
        np.testing.assert_allclose(network(image, sparse), eager[runners.OUTPUT], atol=2e-3)
    assert runner._forward.experimental_get_tracing_count() == 1
    bad = np.zeros((1, 150, 128, 3), np.float32)
    with pytest.raises(ValueError, match="multiples of 32.*got 150x128"):
        network(bad, bad)
    image, sparse = inputs(1, 128, 128)
    faded = network(image, sparse)
    network.set_fade(False)
    assert heads.fade_of(runner.model) is False
    assert np.abs(network(image, sparse) - faded).max() > 0.5  # far away it keeps moving
    warm = runtime.Propagator()
    assert warm.warm_up() is warm and warm._network.runner._forward is not None


def test_propagator_refuses_bad_paths_and_guidance(tmp_path, saved_model):
    from cmp_tf import runtime

    with pytest.raises(ValueError, match="does not exist"):
        runtime.Propagator(tmp_path / "missing.keras")
    with pytest.raises(ValueError, match="without model.keras"):
        runtime.Propagator(tmp_path)
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="corrupt.keras is not a .keras file"):
        runtime.Propagator(corrupt)
    propagator = runtime.Propagator(saved_model)
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError):
        propagator.propagate(image, np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32))
    with pytest.raises(ValueError):
        propagator.propagate(image, np.array([[40, 3]], np.float32), np.zeros((1, 2)))


def test_the_shipped_model_serves_with_no_path_and_beats_zero_flow(tmp_path):
    """Propagator() loads the pretrained model inside the package (at most 20 MB) and its
    flow on a generated scene is closer to the truth than no motion at all."""
    from cmp_tf import rundir
    from cmp_tf import runtime

    model_file = os.path.join(rundir.PRETRAINED, rundir.MODEL_FILE)
    assert os.path.getsize(model_file) <= 20 * 2**20
    assert rundir.default_checkpoint(root=str(tmp_path)) == rundir.PRETRAINED  # no runs here
    # Results of the shipped model never go into the package, however its path is spelled.
    relative = os.path.relpath(rundir.PRETRAINED)
    assert rundir.is_pretrained(relative) and rundir.is_pretrained(model_file)
    assert not rundir.is_pretrained(str(tmp_path))
    from export import export_lib

    assert export_lib.default_out(os.path.join(relative, "model.keras")) == os.path.join(
        "runs", "pretrained", "export")
    config, from_run = rundir.read_config(rundir.PRETRAINED)
    assert from_run and config.model.head == "fill_correction"
    propagator = runtime.Propagator()
    image, flow, valid = pairs_lib.generated_pairs(1, size=96, seed=1)[0]
    xy, _ = benchmark.guidance_order(flow, valid, "uniform", 25, np.random.default_rng(0))
    points = xy.astype(np.float32)
    vectors = flow[points[:, 1].astype(int), points[:, 0].astype(int)]
    predicted = propagator.propagate(image, points, vectors)
    assert predicted.shape == flow.shape
    epe = np.linalg.norm(predicted - flow, axis=-1).mean()
    assert epe < 0.5 * np.linalg.norm(flow, axis=-1).mean()


def test_a_method_reusing_one_output_buffer_is_scored_per_guidance_set():
    buffer = {}

    def reuse(image, points, vectors):  # one array, refilled at every call
        out = buffer.setdefault("out", np.zeros(image.shape[:2] + (2,), np.float32))
        out[:] = vectors.mean(0)
        return out

    def fresh(image, points, vectors):
        return np.zeros(image.shape[:2] + (2,), np.float32) + vectors.mean(0)

    methods = {"zero": lambda image, p, v: np.zeros(image.shape[:2] + (2,), np.float32),
               "reuse": reuse, "fresh": fresh}
    result = benchmark.evaluate(methods, pairs_lib.generated_pairs(2, size=48), ks=(1, 10),
                                strategies=("uniform",), progress=False)
    epe = {(r["k"], r["method"]): r["epe"] for r in result["rows"]}
    for k in (1, 10):
        assert epe[(k, "reuse")] == epe[(k, "fresh")]


def test_a_method_with_nan_only_at_invalid_pixels_is_scored_and_drawn(tmp_path):
    image, flow, valid = _scene()
    valid = valid.copy()
    valid[:, -8:] = False

    def partial(image, points, vectors):
        out = np.zeros(image.shape[:2] + (2,), np.float32) + vectors.mean(0)
        out[:, -8:] = np.nan
        return out

    methods = {"zero": lambda image, p, v: np.zeros(image.shape[:2] + (2,), np.float32),
               "partial": partial}
    result = benchmark.evaluate(methods, [(image, flow, valid)], ks=(1, 5), progress=False,
                                keep_examples=1)
    report_lib.write_report(result, str(tmp_path))
    assert (tmp_path / "panels.png").stat().st_size > 0


def test_an_outside_file_that_exits_on_import_is_named(tmp_path):
    quits = tmp_path / "quits.py"
    quits.write_text("import sys\nsys.exit('needs an argument')\n")
    with pytest.raises(ValueError, match=r"quits.py could not be loaded: SystemExit"):
        benchmark.load_method(str(quits))


def test_a_method_file_imports_the_files_beside_it(tmp_path):
    """As `python mine.py` would: the method's own folder is on the import path."""
    (tmp_path / "mine_helpers.py").write_text("SHIFT = 2.0\n")
    (tmp_path / "mine.py").write_text(
        "import numpy as np\nimport mine_helpers\n\n"
        "def propagate(image, points, vectors):\n"
        "    return np.full(image.shape[:2] + (2,), mine_helpers.SHIFT, np.float32)\n")
    propagate = benchmark.load_method(str(tmp_path / "mine.py"))
    assert propagate(np.zeros((4, 5, 3), np.uint8), None, None)[0, 0, 0] == 2.0
