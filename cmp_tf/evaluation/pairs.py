"""Where the benchmark's image pairs come from: a run's validation clips through the data
pipeline, or held-out layered scenes with exact flow. Each pair is (image uint8 [H, W, 3],
flow float32 [H, W, 2], valid bool [H, W]).
"""
import numbers
import os

import numpy as np


def pairs_from_dataset(dataset):
    """(image uint8, flow, valid) per example of a `pipeline.make_dataset` split; a
    `pipeline.DataError` (a ValueError) where the split stops at data it cannot read."""
    from cmp_tf.data import pipeline

    for x, y in pipeline.batches(dataset):
        images = np.clip(np.rint(x["image"].numpy()), 0, 255).astype(np.uint8)
        for image, flow, valid in zip(images, y["flow"].numpy(), y["valid"].numpy()):
            yield image, flow, valid[..., 0] if valid.ndim == 3 else valid


def check_pair_count(count, name="--pairs", allow_all=True):
    """Refuses a count of pairs to score that is not a positive whole number (or -1, all of
    them, where `allow_all`): 0 and other negatives were read as "all" by some commands and
    as "none" by others. Returns it."""
    whole = isinstance(count, numbers.Integral) and not isinstance(count, bool)
    if not whole or not (count > 0 or (allow_all and count == -1)):
        raise ValueError(f"{name}={count!r} must be a positive count"
                         + (", or -1 for all pairs." if allow_all else "."))
    return int(count)


def sample_pairs(pairs, count, seed=0):
    """`count` pairs drawn uniformly from a stream of unknown length (reservoir sampling, fixed
    seed), in stream order: spread over every clip, not the first `count`."""
    rng = np.random.default_rng(seed)
    kept = []
    for index, pair in enumerate(pairs):
        if index < count:
            kept.append((index, pair))
        else:
            slot = int(rng.integers(0, index + 1))
            if slot < count:
                kept[slot] = (index, pair)
    return [pair for _, pair in sorted(kept, key=lambda item: item[0])]


def validation_pairs(config, from_run, sources=(), count=0, seed=0, field="--data"):
    """The pairs `evaluate.py` scores a run on: `sources` if given, else the run's validation
    clips (`from_run`: its config.json says which), else the embedded held-out clip; `count` > 0
    draws that many (sample_pairs). Returns (pairs, the sources)."""
    from cmp_tf import data
    from cmp_tf.data import pipeline

    if not sources:  # errors name the recipe's field the sources came from, not the flag
        field = "config.data.val"
    sources = tuple(sources) or (tuple(config.data.val) if from_run and config.data.val
                                 else data.sample_splits()[1])
    pipeline.check_sources(sources, field)
    config.data.val = sources
    pairs = pairs_from_dataset(pipeline.make_dataset(config, "val", guidance=False, field=field))
    return (sample_pairs(pairs, count, seed) if count > 0 else pairs), sources


GENERATED = "generated"  # the `data` name of held-out layered scenes (generated_pairs)
GENERATED_COUNT = 32  # scenes drawn when no count is given


def scored_pairs(config, from_run, data=(), count=0, seed=0, reference="exact"):
    """The pairs `evaluate.py --data` names: held-out layered scenes for ["generated"] (their
    flow the exact one, or a teacher's on their two frames: `reference`), else
    `validation_pairs` of `data`. Returns (pairs, what they are, in words)."""
    if GENERATED in list(data) and len(data) > 1:
        raise ValueError(f"data={list(data)}: '{GENERATED}' (held-out layered scenes, their flow "
                         "exact) is scored on its own, not mixed with other data; score each in "
                         "its own run.")
    if list(data) == [GENERATED]:
        count = count if count > 0 else GENERATED_COUNT
        if reference == "exact":
            return generated_pairs(count, seed=seed), "generated scenes"
        from cmp_tf.data import teacher

        estimators = teacher.named_estimators()
        if reference not in estimators:
            raise ValueError(f"reference={reference!r}: 'exact' or a teacher, one of "
                             f"{', '.join(estimators)}.")
        estimate = estimators[reference]()
        pairs = []
        for scene, (first, _, valid, second) in enumerate(
                generated_pairs(count, seed=seed, second_frame=True)):
            flow = teacher.checked_flow(estimate(first, second), first.shape[:2] + (2,),
                                        f"reference={reference!r} on generated scene {scene}")
            pairs.append((first, flow, valid))
        return pairs, f"generated scenes, {reference} flow"
    if reference != "exact":
        raise ValueError(f"reference={reference!r} is for generated scenes (data=['generated']); "
                         f"the pairs of {list(data) or 'the validation data'} have their own flow.")
    pairs, sources = validation_pairs(config, from_run, data, count, seed)
    names = ", ".join(os.path.basename(str(s).rstrip("/")) for s in sources)
    height, width = config.data.crop
    return pairs, (f"{names} (centre {height}x{width} crops of the frames resized to a "
                   f"{config.data.short_size:g} px short side, flow in those pixels)")


GENERATED_STREAM = 11  # seed-sequence prefix of benchmark scenes: disjoint from training's


def generated_pairs(count, size=128, seed=0, second_frame=False):
    """Layered scenes with exact flow (`cmp_tf.data.layered`, procedural textures), drawn from
    a seed stream training never uses: held-out scenes whose motion boundaries are known.
    Returns [(image uint8, flow, valid bool)], with `second_frame` a fourth item, the scene's
    frame t + 1 uint8."""
    from cmp_tf.data import layered

    pairs = []
    for scene in range(count):
        rng = np.random.default_rng([GENERATED_STREAM, seed, scene])
        image, flow, valid, *second = layered.render_scene(rng, size, size,
                                                           second_frame=second_frame)
        pair = (np.round(image).astype(np.uint8), flow, valid > 0)
        pairs.append((*pair, *(np.clip(np.round(f), 0, 255).astype(np.uint8) for f in second)))
    return pairs
