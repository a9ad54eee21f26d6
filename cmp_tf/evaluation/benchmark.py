"""The sparse-to-dense motion benchmark: how well a propagator spreads K guidance vectors.

For every image pair with a reference flow, guidance is drawn twice with a fixed seed —
watershed (one point per moving region, as CMP trains) and uniform over valid pixels — as one
ordering per strategy, so the points of a smaller K are a prefix of a larger K's. Every method
then propagates the same points, and is scored by end-point error over valid pixels: overall,
relative to the zero-flow error of the same pair, and split into pixels near and far from
motion boundaries.

A method is anything with `propagate(image, points, vectors) -> flow` (docs/design.md §8): a
`cmp_tf.runtime.Propagator`, a baseline from `baselines`, or an outside Python file.
"""
import importlib.util
import os
import sys

import numpy as np

from cmp_tf.data import sampling

KS = (1, 5, 10, 25, 100, 400)
STRATEGIES = ("watershed", "uniform")
NMS_KS = 41  # watershed window, the reference's for its demo model
NEAR_BOUNDARY_PX = 5  # pixels this close to a motion edge count as "near"
MIN_ZERO_EPE = 0.1  # pairs whose zero-flow error is below this (px) are left out of ratios


def load_method(path):
    """An outside method: a Python file defining `propagate(image, points, vectors)`."""
    if not os.path.isfile(path) or not path.endswith(".py"):
        raise ValueError(f"--method={path}: expected a Python file defining propagate(image, "
                         "points, vectors) -> flow.")
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0],
                                                  path)
    module = importlib.util.module_from_spec(spec)
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:  # files beside it import, as under `python file.py`
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as error:  # the user's file: its own error, named
        raise ValueError(f"--method={path} could not be loaded: {type(error).__name__}: "
                         f"{error}") from error
    if not callable(getattr(module, "propagate", None)):
        raise ValueError(f"{path} defines no function propagate(image, points, vectors).")
    return module.propagate


def check_strategies(strategies):
    """The guidance strategies to score, in order; ValueError naming --strategies if not."""
    if isinstance(strategies, str):
        raise ValueError(f"--strategies={strategies!r}: expected a list of names among "
                         f"{', '.join(STRATEGIES)}, not one string.")
    strategies = tuple(strategies)
    unknown = [s for s in strategies if s not in STRATEGIES]
    if not strategies or unknown or len(set(strategies)) != len(strategies):
        raise ValueError(f"--strategies={list(strategies)}: expected distinct names among "
                         f"{', '.join(STRATEGIES)}.")
    return strategies


def example_setting(strategies, ks, example_k=10):
    """(strategy, K) the example panels show: watershed (how CMP trains) if scored, else the
    first strategy; `example_k` if scored, else the scored K nearest to it."""
    strategy = "watershed" if "watershed" in strategies else strategies[0]
    return strategy, min(ks, key=lambda k: (abs(k - example_k), k))


def check_ks(ks):
    """The guide counts K to score: whole numbers (or their digits, as flags give them),
    distinct, increasing, >= 1."""
    def whole(k):
        if isinstance(k, str) and k.strip().isdigit():
            return int(k)
        if sampling.is_int(k):
            return int(k)
        raise ValueError(f"ks must be whole numbers of guides; got {k!r} in {ks!r}.")

    ks = tuple(whole(k) for k in ks)
    if not ks or min(ks) < 1 or list(ks) != sorted(set(ks)):
        raise ValueError(f"ks must be distinct increasing positive counts; got {ks}.")
    return ks


def check_pair(image, flow, valid, index):
    """One scored pair as arrays: image uint8 [H, W, 3], flow float32 [H, W, 2] finite where
    valid (0 elsewhere), valid bool [H, W]; ValueError naming the pair otherwise."""
    image, flow, valid = np.asarray(image), np.asarray(flow), np.asarray(valid)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"pair {index}: the image must be uint8 [H, W, 3] (RGB 0..255); got "
                         f"{image.dtype} {image.shape}.")
    if flow.shape != image.shape[:2] + (2,) or not np.issubdtype(flow.dtype, np.floating):
        raise ValueError(f"pair {index}: the flow must be float [H, W, 2] of the image's size "
                         f"{image.shape[:2]}; got {flow.dtype} {flow.shape}.")
    if valid.shape != image.shape[:2]:
        raise ValueError(f"pair {index}: valid must have the image's shape {image.shape[:2]}; "
                         f"got {valid.shape}.")
    valid = valid > 0
    flow = flow.astype(np.float32)
    finite = np.isfinite(flow).all(-1)
    if not finite[valid].all():
        raise ValueError(f"pair {index}: the reference flow has {int((~finite & valid).sum())} "
                         "NaN or infinite vectors at valid pixels; mark them invalid.")
    return image, np.where(finite[..., None], flow, 0.0).astype(np.float32), valid


def guidance_order(flow, valid, strategy, count, rng, nms_ks=NMS_KS, edge_distance=None):
    """`count` guidance pixels in the order they are given: [count, 2] (x, y) and how many of
    them came from the strategy itself (watershed may find fewer than asked).

    watershed: its points in random order first; the rest drawn among valid pixels with
    probability growing with the distance to motion edges (region middles before borders).
    uniform: distinct valid pixels, uniformly.
    `edge_distance`: `sampling.distance_to_motion_edges(flow)` if the caller has it already.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}; got {strategy!r}.")
    valid = np.asarray(valid) > 0
    available = int(valid.sum())
    if count > available:
        raise ValueError(f"K={count} guidance points asked, but the pair has only {available} "
                         "valid pixels: lower the largest K (--ks).")
    height, width = valid.shape
    taken = np.zeros(height * width, bool)
    chosen = []
    if strategy == "watershed":
        rows, cols = sampling.watershed_points(flow, nms_ks, rng)
        keep = valid[rows, cols]
        flat = (rows[keep] * width + cols[keep])[rng.permutation(int(keep.sum()))][:count]
        chosen.append(flat)
        taken[flat] = True
        if edge_distance is None:
            edge_distance = sampling.distance_to_motion_edges(flow)
        weight = edge_distance.ravel() + 1.0
    else:
        weight = np.ones(height * width)
    found = sum(len(c) for c in chosen)
    rest = count - found
    if rest:
        candidates = np.flatnonzero(valid.ravel() & ~taken)
        p = weight[candidates] / weight[candidates].sum()
        chosen.append(rng.choice(candidates, rest, replace=False, p=p))
    flat = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
    xy = np.stack([flat % width, flat // width], 1).astype(np.float32)
    return xy, found


def _errors(pred, flow, valid, near):
    error = np.linalg.norm(pred - flow, axis=-1)
    sums = {}
    for part, mask in (("all", valid), ("near", valid & near), ("far", valid & ~near)):
        sums[part] = (float(error[mask].sum()), int(mask.sum()))
    return error, sums


def evaluate(methods, pairs, ks=KS, strategies=STRATEGIES, seed=0, progress=True,
             keep_examples=0, example_k=10):
    """Scores every method on every pair, strategy and K.

    Args:
        methods: {name: propagate function or object with propagate (and optionally
            propagate_batch, used to run all guidance sets of an image in one call)}, "zero"
            among them (the relative errors divide by its EPE).
        pairs: iterable of (image uint8 HxWx3, flow HxWx2, valid HxW), checked by `check_pair`.
        keep_examples: how many pairs to keep predictions of, for the panels, at
            `example_setting(strategies, ks, example_k)`.
    Returns:
        {"rows": [{strategy, k, method, epe, epe_near, epe_far, relative, pairs}],
         "watershed_filled": {k: pairs where watershed found fewer than k points},
         "pairs", "examples": [...], "example_setting": [strategy, K], "still_pairs": pairs
         left out of the relative errors, "min_zero_epe"} — EPEs in px pooled
        over valid pixels; `relative` is the mean over pairs of EPE / zero-flow EPE (pairs with
        almost no motion left out).
    Raises:
        ValueError: a method returned NaN or infinite flow at a valid pixel (named with the
            pair), or the flags are inconsistent.
    """
    from cmp_tf import progress as progress_lib

    ks, strategies, names = check_ks(ks), check_strategies(strategies), list(methods)
    example = example_setting(strategies, ks, example_k)
    if not names:
        raise ValueError("methods is empty: nothing to evaluate.")
    if "zero" not in methods:
        raise ValueError("methods must include 'zero' (the relative errors divide by it).")
    rng = np.random.default_rng(seed)
    totals = {}  # (strategy, k, method) -> {"all": [sum, n], "near", "far", "ratios": []}
    filled = {k: 0 for k in ks}
    examples, count, still = [], 0, set()  # still: pairs left out of the relative errors
    for image, flow, valid in progress_lib.bar(pairs, desc="propagation", unit="pair",
                                               disable=not progress):
        image, flow, valid = check_pair(image, flow, valid, count)
        edge_distance = sampling.distance_to_motion_edges(flow)
        near = edge_distance <= NEAR_BOUNDARY_PX
        sets = []
        for strategy in strategies:
            try:
                xy, found = guidance_order(flow, valid, strategy, ks[-1], rng,
                                           edge_distance=edge_distance)
            except ValueError as error:  # too few valid pixels: say which pair
                raise ValueError(f"Pair {count}: {error}") from None
            for k in ks:
                if strategy == "watershed" and found < k:
                    filled[k] += 1
                points = xy[:k]
                vectors = flow[points[:, 1].astype(int), points[:, 0].astype(int)]
                sets.append((strategy, k, points, vectors))
        predictions = {name: _run(name, method, image, count, [(p, v) for _, _, p, v in sets])
                       for name, method in methods.items()}
        for name, prediction in predictions.items():
            bad = ~np.isfinite(prediction[:, valid]).all(axis=(1, 2))
            if bad.any():
                strategy, k = sets[int(np.argmax(bad))][:2]
                raise ValueError(f"Method {name!r} returned NaN or infinite flow at valid pixels "
                                 f"of pair {count} ({strategy} guidance, K={k}): its scores "
                                 "would mean nothing. A method must return finite flow.")
            predictions[name] = np.where(np.isfinite(prediction), prediction, 0.0)  # invalid px
        for index, (strategy, k, points, vectors) in enumerate(sets):
            scored = {name: _errors(predictions[name][index], flow, valid, near)
                      for name in names}
            zero_total, zero_pixels = scored["zero"][1]["all"]
            zero_epe = zero_total / max(zero_pixels, 1)
            kept = {}
            for name, (error, sums) in scored.items():
                slot = totals.setdefault((strategy, k, name), {
                    "all": [0.0, 0], "near": [0.0, 0], "far": [0.0, 0], "ratios": []})
                for part, (total, n) in sums.items():
                    slot[part][0] += total
                    slot[part][1] += n
                if zero_epe >= MIN_ZERO_EPE:
                    slot["ratios"].append(sums["all"][0] / max(sums["all"][1], 1) / zero_epe)
                else:
                    still.add(count)
                kept[name] = (predictions[name][index], error)
            if count < keep_examples and (strategy, k) == example:
                examples.append(dict(image=image, flow=flow, valid=valid, points=points,
                                     vectors=vectors, predictions=kept))
        count += 1
    if not count:
        raise ValueError("No pairs to evaluate: the data is empty.")
    rows = []
    for (strategy, k, name), slot in totals.items():
        epe = {part: slot[part][0] / slot[part][1] if slot[part][1] else float("nan")
               for part in ("all", "near", "far")}
        rows.append(dict(strategy=strategy, k=k, method=name, epe=epe["all"],
                         epe_near=epe["near"], epe_far=epe["far"],
                         relative=float(np.mean(slot["ratios"])) if slot["ratios"] else
                         float("nan"), pairs=len(slot["ratios"])))
    return dict(rows=rows, watershed_filled=filled, pairs=count, ks=list(ks),
                strategies=list(strategies), methods=names, seed=seed, examples=examples,
                example_setting=list(example), still_pairs=len(still),
                min_zero_epe=MIN_ZERO_EPE)


def _as_flow(value, where):
    """A method's output as float32 flow; ValueError for one that is not real numbers (bool,
    complex, text) or holds motion beyond any image (its EPE would overflow to inf)."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:  # ragged: NumPy's words name no method
        raise ValueError(f"{where} returned flow that is not one array: {error}") from None
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer)
                                   or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{where} returned flow of dtype {array.dtype}; expected real numbers "
                         "(px).")
    finite = np.abs(array[np.isfinite(array)])  # NaN and inf: named where they are valid
    if finite.size and finite.max() > sampling.MAX_VECTOR_PX:
        raise ValueError(f"{where} returned motion beyond {sampling.MAX_VECTOR_PX:g} px (up "
                         f"to {float(finite.max()):.3g}).")
    return array.astype(np.float32)


def _run(name, method, image, index, guidance):
    """`method`'s flows for every guidance set of pair `index`; what it raises, or a flow of
    the wrong shape, is a ValueError naming the method and the pair (an outside method's
    own error would otherwise say neither)."""
    where = f"Method {name!r} on pair {index}"
    batch = getattr(method, "propagate_batch", None)
    # copies: a method that edits its inputs in place must not move the next one's guides
    image = image.copy()
    guidance = [(p.copy(), v.copy()) for p, v in guidance]
    try:
        if batch is not None:
            returned = batch(image, guidance)
        else:
            propagate = getattr(method, "propagate", method)
            returned = []
            for p, v in guidance:  # copied at once: a method may reuse one output buffer
                flow = propagate(image, p, v)
                returned.append(np.array(flow) if isinstance(flow, np.ndarray) else flow)
    except (Exception, SystemExit) as error:  # noqa: BLE001 - any method's failure, named
        raise ValueError(f"{where} failed: {type(error).__name__}: {error}") from error
    flows = _as_flow(returned, where) if batch is not None else \
        [_as_flow(flow, where) for flow in returned]
    expected = image.shape[:2] + (2,)
    if batch is not None and np.shape(flows) != (len(guidance), *expected):
        raise ValueError(f"{where}: propagate_batch returned flow of shape {np.shape(flows)}; "
                         f"expected {(len(guidance), *expected)}.")
    for flow in flows:
        if np.shape(flow) != expected:
            raise ValueError(f"{where} returned flow of shape {np.shape(flow)}; expected "
                             f"{expected}.")
    return np.stack(flows)
