"""Where the benchmark's image pairs come from: a run's validation clips through the data
pipeline, or held-out layered scenes with exact flow. Each pair is (image uint8 [H, W, 3],
flow float32 [H, W, 2], valid bool [H, W]).
"""
import os

import numpy as np


def pairs_from_dataset(dataset):
    """(image uint8, flow, valid) per example of a `pipeline.make_dataset` split."""
    for x, y in dataset:
        images = np.clip(np.rint(x["image"].numpy()), 0, 255).astype(np.uint8)
        for image, flow, valid in zip(images, y["flow"].numpy(), y["valid"].numpy()):
            yield image, flow, valid[..., 0] if valid.ndim == 3 else valid


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

    sources = tuple(sources) or (tuple(config.data.val) if from_run and config.data.val
                                 else data.sample_splits()[1])
    pipeline.check_sources(sources, field)
    config.data.val = sources
    pairs = pairs_from_dataset(pipeline.make_dataset(config, "val", guidance=False))
    return (sample_pairs(pairs, count, seed) if count > 0 else pairs), sources


GENERATED = "generated"  # the `data` name of held-out layered scenes (generated_pairs)
GENERATED_COUNT = 32  # scenes drawn when no count is given


def scored_pairs(config, from_run, data=(), count=0, seed=0):
    """The pairs `evaluate.py --data` names: held-out layered scenes for ["generated"], else
    `validation_pairs` of `data`. Returns (pairs, what they are, in words)."""
    if list(data) == [GENERATED]:
        return (generated_pairs(count if count > 0 else GENERATED_COUNT, seed=seed),
                "generated scenes")
    pairs, sources = validation_pairs(config, from_run, data, count, seed)
    return pairs, ", ".join(os.path.basename(str(s).rstrip("/")) for s in sources)


GENERATED_STREAM = 11  # seed-sequence prefix of benchmark scenes: disjoint from training's


def generated_pairs(count, size=128, seed=0):
    """Layered scenes with exact flow (`cmp_tf.data.layered`, procedural textures), drawn from
    a seed stream training never uses: held-out scenes whose motion boundaries are known."""
    from cmp_tf.data import layered

    pairs = []
    for scene in range(count):
        rng = np.random.default_rng([GENERATED_STREAM, seed, scene])
        image, flow, valid = layered.render_scene(rng, size, size)
        pairs.append((np.round(image).astype(np.uint8), flow, valid > 0))
    return pairs
