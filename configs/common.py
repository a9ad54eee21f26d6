"""Helpers shared by the recipes."""
import ml_collections

from cmp_tf import models  # noqa: F401  (registers the parts whose options recipes hold)
from cmp_tf import registry
from cmp_tf.data import ingest as ingest_lib
from cmp_tf.data import layered as layered_lib
from cmp_tf.data import pipeline

# config.data.max_bad_in_a_row: unreadable samples in a row that stop the input pipeline.
MAX_BAD_IN_A_ROW = pipeline.MAX_BAD_IN_A_ROW


def _override(section, fields, overrides):
    """`fields` with `overrides` applied; a key `fields` lacks is a typo: fail naming it."""
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"Unknown {section} fields {unknown}; known: {sorted(fields)}.")
    return {**fields, **overrides}


_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")  # a boolean recipe argument's words


def parse_arg(arg, **defaults):
    """Parses a recipe argument, comma-separated words over `defaults` (the recipe's own
    arguments, e.g. "runlocal" where `runlocal` is one of them).

    A bare word sets a boolean option; key=value keeps the default's type (a boolean takes
    true/false, yes/no, 1/0). Unknown keys and values a boolean does not take fail.
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
            if kind is bool:
                if value.lower() not in _TRUE + _FALSE:
                    raise ValueError(f"Recipe argument {key}={value!r} must be one of "
                                     f"{', '.join(_TRUE + _FALSE)}.")
                parsed[key] = value.lower() in _TRUE
            else:
                parsed[key] = kind(value)
    return parsed


def model_defaults(**parts):
    """Fields of `config.model` every recipe has, with the reference's init.

    Parts are chosen by name (`image_encoder`, `sparse_encoder`, `decoder`, `head`); `options`
    maps a part name to its builder's keyword arguments and applies only while that part is
    chosen, so `--config.model.image_encoder=resnet50` works whatever options the recipe set
    (with a sparse encoder of its stride, which the build names where it differs).
    The head defaults to the paper's bins; every registered head's options are present with
    their defaults (cmp_tf/models/heads.py), so `--config.model.head=fill_correction
    --config.model.options.fill_correction.relax=2` works from any recipe.
    """
    fields = dict(decoder_combo=(1, 2, 4), head="bins", init_gain=0.02, sync_bn=True)
    options = {name: registry.defaults("head", name) for name in registry.names("head")}
    for name, kwargs in parts.pop("options", {}).items():
        options[name] = {**options.get(name, {}), **kwargs}
    fields.update(parts, options=options)
    return fields


def flow(**overrides):
    """`config.flow`: the flow quantization and loss. Defaults are the paper's: 99 bins over
    +-50 px, cross-entropy against the bin holding the flow (`loss="discrete"`; "l1" / "l2"
    for the regression heads). `relative` divides a regression loss by each sample's zero-flow
    loss, at least `relative_floor` (cmp_tf.losses.relative_to_zero_flow)."""
    fields = dict(nbins=99, fmax=50.0, loss="discrete", relative=False, relative_floor=0.5)
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


def train(**overrides):
    """`config.train`: loop length, checkpoints, logging, numerics."""
    fields = dict(steps=1000, checkpoint_every=500, keep_checkpoints=3, log_every=50,
                  image_every=500, precision="float32", jit_compile=False)
    return _override("train", fields, overrides)
