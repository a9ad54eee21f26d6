"""Helpers shared by the recipes."""
import ml_collections

from cmp_tf import data
from cmp_tf.data import ingest as ingest_lib
from cmp_tf.data import layered as layered_lib


def _override(section, fields, overrides):
    """`fields` with `overrides` applied; a key `fields` lacks is a typo: fail naming it."""
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"Unknown {section} fields {unknown}; known: {sorted(fields)}.")
    return {**fields, **overrides}


def parse_arg(arg, **defaults):
    """Parses a recipe argument such as "runlocal" or "runlocal,crop=64" over `defaults`.

    A bare word sets a boolean option; key=value keeps the default's type. Unknown keys fail.
    """
    parsed = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in parsed:
            raise ValueError(f"Unknown recipe argument {key!r}; known: {sorted(defaults)}.")
        if not _:
            parsed[key] = True
        else:
            kind = type(defaults[key])
            parsed[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return parsed


def model_defaults(**parts):
    """Fields of `config.model` every recipe has, with the reference's init.

    Parts are chosen by name (`image_encoder`, `sparse_encoder`, `decoder`); `options` maps a
    part name to its builder's keyword arguments and applies only while that part is chosen,
    so `--config.model.image_encoder=resnet50` works whatever options the recipe set.
    """
    fields = dict(decoder_combo=(1, 2, 4), dense_prior=False, prior_sigma=2.0, init_gain=0.02,
                  honour_guidance=False, prior_skips=False, prior_fill="nearest", fill_gain=False,
                  gain_profile="exponential", learn_blend_weight=True,
                  pull_push=dict(pull="box", relax=0), sync_bn=True, options={})
    fields.update(parts)
    return fields


def flow(**overrides):
    """`config.flow`: the flow quantization and loss. Defaults are the paper's: 99 bins over
    +-50 px, cross-entropy against the bin holding the flow (`targets="one_hot"`).

    `targets="two_hot"` splits each target between the two nearest bin centres in proportion,
    so the softmax expectation the model reads out is unbiased below one bin (the paper's
    one-hot targets teach every flow under half a bin to read as zero); `readout_weight` adds
    that weight times the L1 error of the read-out flow (a regression refinement of the bins).
    """
    fields = dict(nbins=99, fmax=50.0, loss="discrete", targets="one_hot", readout_weight=0.0)
    return _override("flow", fields, overrides)


def layered(**overrides):
    """`config.data.layered`: layered scenes with exact flow mixed into training
    (cmp_tf.data.layered; ratio 0 = video samples only, the paper's data)."""
    fields = dict(layered_lib.DEFAULTS)
    return _override("layered", fields, overrides)


def ingest(**overrides):
    """`config.ingest`: how videos become shards (cmp_tf.data.ingest), with `overrides`."""
    fields = ingest_lib.default_ingest_config()
    return _override("ingest", fields, overrides)


def sample_splits():
    """(train, val) paths: the embedded clips, split by clip so validation is unseen video."""
    return ((data.sample_clip("bikes"), data.sample_clip("bigbuckbunny")),
            (data.sample_clip("carphone"),))


def train(**overrides):
    """`config.train`: loop length, checkpoints, logging, numerics."""
    fields = dict(steps=1000, checkpoint_every=500, keep_checkpoints=3, log_every=50,
                  image_every=500, precision="float32", jit_compile=False)
    return _override("train", fields, overrides)
