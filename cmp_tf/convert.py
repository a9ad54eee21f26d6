r"""The reference's PyTorch checkpoints as cmp_tf models: every tensor mapped onto our layers.

  python -m cmp_tf.convert --checkpoint=ckpt_iter_42000.pth.tar \
      --config=configs/resnet50_semiauto.py --out=runs/semiauto_42000/model.keras
  python -m cmp_tf.convert --checkpoint=convert_iter_70000.pth.tar \
      --config=configs/alexnet_yfcc.py --encoder_only --out=runs/alexnet_70000/encoder.keras

The file is read by `cmp_tf.torch_checkpoint` (no PyTorch needed, no code from the file run).
Our layer names follow the reference's modules, so the mapping is a few rules, not a table:
  - a conv_bn_relu unit `X` / `X_bn` is the reference's nn.Sequential(Conv2d, BatchNorm2d,
    ReLU): `X.0`, `X.1` (AlexNet's conv1..fc7, fusion8, skipconv4, ...);
  - decoder branches `decoder{K}_conv{i}` sit in nn.Sequential([MaxPool2d if K > 1] +
    (Conv2d, BatchNorm2d, ReLU) per conv); ShallowNet's `conv{i}` in `features`, a
    (Conv2d, BatchNorm2d, ReLU, pool) per conv;
  - anything else is the reference's path with '.' -> '_' (torchvision's ResNet names
    `layer3.0.conv2`, `layer3.0.downsample.0`, bare convs `conv5`, `head`).
Conv weights go OIHW -> HWIO; BatchNorm weight, bias, running_mean, running_var -> gamma,
beta, moving_mean, moving_variance; `num_batches_tracked` (Keras has none) is dropped. The
reference's sparse input is 4 channels (u, v, mask, mask); ours is (u, v, mask), so the first
sparse conv's two mask slices are summed: exact, since both channels always hold the same mask.
A `module.` prefix (the reference's FixModule / DistModule wrapper; `_orig_mod.` and `model.`
of other trainers too) and a state dict nested under `state_dict` (its checkpoints also hold
`step` and `optimizer`) are unwrapped. Anything else unmapped, missing or mis-shaped fails the
conversion, naming every such tensor, and so do NaN or infinite weights and negative variances.

Files that tools/weight_process.py writes (the image encoder's state dict alone, no prefix)
convert with --encoder_only; from a whole checkpoint, --encoder_only keeps just the encoder.
"""
import collections
import json
import os
import re

import numpy as np

from cmp_tf import rundir
from cmp_tf import torch_checkpoint

# Our part (a layer of the CMP model) -> the reference CMP module's attribute holding it.
PARTS = {"image_encoder": "image_encoder", "sparse_encoder": "flow_encoder",
         "decoder": "flow_decoder"}
# Parts the reference has (docs/reference.md §1); others (MobileNetV3) have no checkpoints to
# convert.
REFERENCE_PARTS = {"image_encoder": ("alexnet_fcn_32x", "resnet50"),
                   "sparse_encoder": ("shallownet8x", "shallownet32x"),
                   "decoder": ("plain", "skip_layer")}
# Which recipe a checkpoint's parts suggest, for the message when the config does not fit.
RECIPES = {("alexnet_fcn_32x", "plain"): "configs/alexnet_yfcc.py",
           ("resnet50", "plain"): "configs/resnet50_yfcc.py",
           ("resnet50", "skip_layer"): "configs/resnet50_semiauto.py"}
_KERAS_TO_TORCH = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
                   "moving_mean": "running_mean", "moving_variance": "running_var"}
_DROPPED = "num_batches_tracked"  # a BatchNorm counter Keras does not keep
# What wraps a model's own names: DataParallel and the reference's wrappers, torch.compile,
# a Lightning module's attribute.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")
REFERENCE_FMAX = 50.0  # px: every reference recipe's flow.fmax, fixed in its bins' read-out
_MAX_LISTED = 30


def reference_module(part, name, bn_units=()):
    """Our layer `name` in `part` -> the reference's module path inside that part.

    Args:
        bn_units: names of our convs followed by a BatchNorm named `<conv>_bn` in that part
            (conv_bn_relu units, an nn.Sequential(Conv2d, BatchNorm2d, ReLU) in the reference).
    """
    unit = name.removesuffix("_bn")
    is_bn = unit != name
    branch = re.fullmatch(r"decoder(\d+)_conv(\d+)", unit)
    if part == "decoder" and branch:  # [MaxPool2d if K > 1] + (Conv2d, BN, ReLU) per conv
        scale, index = int(branch[1]), int(branch[2])
        return f"decoder{scale}.{(scale > 1) + 3 * (index - 1) + is_bn}"
    shallow = re.fullmatch(r"conv(\d+)", unit)
    if part == "sparse_encoder" and shallow:  # features: (Conv2d, BN, ReLU, pool) per conv
        return f"features.{4 * (int(shallow[1]) - 1) + is_bn}"
    if unit in bn_units:
        return f"{unit}.{int(is_bn)}"
    return name.replace("_", ".")


def _weight_layers(part_model):
    return [layer for layer in part_model.layers if layer.weights]


def reference_names(part, part_model):
    """{reference state-dict key: (layer, index of the layer's weight)} for one of our parts,
    keys prefixed with the reference CMP's attribute (`image_encoder.`, `flow_encoder.`, ...)."""
    layers = _weight_layers(part_model)
    names = {layer.name for layer in layers}
    bn_units = {n for n in names if f"{n}_bn" in names}
    mapping = {}
    for layer in layers:
        if type(layer).__name__ not in ("Conv2D", "BatchNorm", "BatchNormalization"):
            raise ValueError(f"{part}/{layer.name} is a {type(layer).__name__}: no reference "
                             "layer maps onto it.")
        module = reference_module(part, layer.name, bn_units)
        for index, variable in enumerate(layer.weights):
            key = f"{PARTS[part]}.{module}.{_KERAS_TO_TORCH[variable.name]}"
            if key in mapping:
                raise ValueError(f"Two of our weights map onto {key}: {mapping[key][0].name} "
                                 f"and {layer.name}.")
            mapping[key] = (layer, index)
    return mapping


def _is_sparse_input_conv(part, layer):
    return part == "sparse_encoder" and layer.name == "conv1"


def _to_keras(part, layer, variable, value):
    """A reference tensor -> our weight's layout (conv OIHW -> HWIO, the 4->3 mask fold)."""
    value = np.asarray(value, np.float32)
    if variable.name != "kernel" or value.ndim != 4:
        return value
    if _is_sparse_input_conv(part, layer) and value.shape[1] == 4:
        # (u, v, mask, mask) -> (u, v, mask): the two mask channels are always equal.
        value = np.concatenate([value[:, :2], value[:, 2:3] + value[:, 3:4]], axis=1)
    return value.transpose(2, 3, 1, 0)


def _to_torch(part, layer, variable, value, mask_split=0.5):
    """Our weight -> the reference's layout (the inverse of _to_keras)."""
    value = np.asarray(value, np.float32)
    if variable.name != "kernel" or value.ndim != 4:
        return value
    value = value.transpose(3, 2, 0, 1)
    if _is_sparse_input_conv(part, layer):
        mask = value[:, 2:3]
        value = np.concatenate([value[:, :2], mask * mask_split, mask * (1 - mask_split)], 1)
    return value


def model_parts(model):
    """{part: sub-model} of a CMP model, or {"image_encoder": model} for an encoder alone."""
    names = {layer.name for layer in model.layers}
    if set(PARTS) <= names:
        return {part: model.get_layer(part) for part in PARTS}
    return {"image_encoder": model}


def to_reference(model, mask_split=0.5):
    """Our model's weights as a reference state dict (keys without `module.`), with a
    `num_batches_tracked` per BatchNorm as the reference's: for tests and tools.

    Args:
        mask_split: the share of our mask weights given to the first of the reference's two
            mask channels (any split folds back to the same weights).
    """
    state = collections.OrderedDict()
    for part, part_model in model_parts(model).items():
        for key, (layer, index) in reference_names(part, part_model).items():
            variable = layer.weights[index]
            state[key] = _to_torch(part, layer, variable, variable.numpy(), mask_split)
            if key.endswith(".running_var"):
                state[key[:-len("running_var")] + _DROPPED] = np.array(0, np.int64)
    return state


def _is_state_dict(obj):
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())


def unwrap(obj, path):
    """A loaded checkpoint -> {key: array}: the `state_dict` entry if nested (or the one entry
    that is a dict of tensors, as other trainers save under 'model'), wrapper prefixes removed
    (`module.` of DataParallel and the reference's wrappers, `_orig_mod.` of torch.compile,
    `model.` of a Lightning module)."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and not any(isinstance(v, np.ndarray) for v in obj.values()):
        nested = [k for k, v in obj.items() if _is_state_dict(v)]
        if len(nested) > 1:
            raise ValueError(f"{path} holds several state dicts ({', '.join(map(str, nested))})"
                             ": save the one to convert alone, or under 'state_dict'.")
        if nested:
            obj = obj[nested[0]]
    if isinstance(obj, dict) and not obj:
        raise ValueError(f"{path} holds an empty state dict: no tensor to convert.")
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict (a dict of "
                         "tensors, possibly under 'state_dict').")
    others = sorted(str(k) for k, v in obj.items()
                    if not isinstance(k, str) or not isinstance(v, np.ndarray))
    if others:
        raise ValueError(f"{path} is not a state dict: entries {others[:_MAX_LISTED]} are not "
                         "named tensors (a checkpoint keeps its weights under 'state_dict').")
    state = collections.OrderedDict()
    for key, value in obj.items():
        name = key
        while name.startswith(_WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        if name in state:
            raise ValueError(f"{path} holds {name} twice (with and without a wrapper's prefix: "
                             f"{', '.join(_WRAPPER_PREFIXES)}).")
        state[name] = value
    return state


def read_state_dict(path):
    """The state dict in a reference checkpoint file, unwrapped (see `unwrap`)."""
    return unwrap(torch_checkpoint.load(path), os.fspath(path))


def _describe(keys):
    """(image encoder, decoder) a reference state dict's keys suggest, e.g. for hints."""
    encoder = ("resnet50" if any(".layer1." in f".{k}" for k in keys) else
               "alexnet_fcn_32x" if any("fc6." in k for k in keys) else None)
    decoder = ("skip_layer" if any(k.startswith("flow_decoder.fusion8.") for k in keys) else
               "plain" if any(k.startswith("flow_decoder.") for k in keys) else None)
    return encoder, decoder


def _listed(problems):
    more = len(problems) - _MAX_LISTED
    return "\n  ".join(problems[:_MAX_LISTED]) + (f"\n  ... and {more} more" if more > 0 else "")


def check_config(config):
    """ValueError unless the recipe's parts are the reference's (only those have checkpoints)."""
    m = config.model
    for part, known in REFERENCE_PARTS.items():
        if m[part] not in known:
            raise ValueError(f"config.model.{part}={m[part]!r} has no reference checkpoints; "
                             f"the reference has {', '.join(known)}.")
    head, options = m.get("head", "bins"), m.get("options", {}).get(m.get("head", "bins"), {})
    if head != "bins":
        raise ValueError(f"config.model.head={head!r} has no reference checkpoints; the "
                         "reference has the paper's 'bins' head.")
    fmax = config.get("flow", {}).get("fmax", REFERENCE_FMAX)
    if fmax != REFERENCE_FMAX:
        raise ValueError(f"config.flow.fmax={fmax!r}: the reference's checkpoints read their "
                         f"bins out over +-{REFERENCE_FMAX:g} px (no weight holds it), so "
                         "another value would scale every flow; leave it at the recipe's.")
    if options.get("nearest_prior", False):
        raise ValueError("config.model.options.bins.nearest_prior=True adds inputs the reference "
                         "does not have; convert with the paper recipe (it is False there).")


def load_state(model, state, path="state dict", encoder_only=False, parts=None):
    """Sets `model`'s weights (a CMP, or an image encoder alone) from a reference state dict.

    All or nothing: every weight of ours must get a tensor of the right shape and every tensor
    must be used, except BatchNorm's `num_batches_tracked` and, for an encoder alone from a whole
    checkpoint, the sparse encoder's and decoder's tensors.

    Args:
        state: {reference key: array}, `module.` removed (see `unwrap`); keys of an image
            encoder's own state dict (tools/weight_process.py) may lack `image_encoder.`.
        parts: {part: model} to fill instead of `model_parts(model)` (e.g. a few layers of a
            part, as the tests' fixtures of reference parts).
    Returns:
        {"tensors": tensors set, "dropped": keys deliberately left out}.
    Raises:
        ValueError naming `path` and listing the missing, unused and mis-shaped tensors.
    """
    parts = parts or model_parts(model)
    prefixes = tuple(f"{attr}." for attr in PARTS.values())
    if not any(key.startswith(prefixes) for key in state):  # an image encoder's own state dict
        if set(parts) != {"image_encoder"} and not encoder_only:
            raise ValueError(f"{path} holds an image encoder alone (tools/weight_process.py "
                             "output: no image_encoder./flow_encoder./flow_decoder. keys); "
                             "convert it with --encoder_only.")
        state = collections.OrderedDict((f"{PARTS['image_encoder']}.{k}", v)
                                        for k, v in state.items())
    mapping = {}
    for part, part_model in parts.items():
        mapping.update(reference_names(part, part_model))
    dropped = [k for k in state if k.rsplit(".", 1)[-1] == _DROPPED]
    if set(parts) == {"image_encoder"}:
        dropped += [k for k in state if k.startswith(prefixes[1:])]
    used = set(mapping) | set(dropped)
    missing = [f"{k}: missing from the checkpoint" for k in mapping if k not in state]
    unused = [f"{k}: in the checkpoint, no layer of ours takes it" for k in state
              if k not in used]
    misshaped, values = [], {}
    for key, (layer, index) in mapping.items():
        if key not in state:
            continue
        part = next(p for p, a in PARTS.items() if key.startswith(f"{a}."))
        variable = layer.weights[index]
        try:
            value = _to_keras(part, layer, variable, state[key])
        except (TypeError, ValueError) as error:  # e.g. not numbers
            misshaped.append(f"{key}: {error}")
            continue
        if tuple(value.shape) != tuple(variable.shape):
            expected = _to_torch(part, layer, variable, np.zeros(variable.shape)).shape
            misshaped.append(f"{key}: shape {tuple(state[key].shape)} in the checkpoint, "
                             f"{tuple(expected)} for our {layer.name} ({variable.name})")
            continue
        values[key] = value
    broken = [f"{key}: {int(np.size(v) - np.isfinite(v).sum())} NaN or infinite values"
              for key, v in values.items() if not np.isfinite(v).all()]
    broken += [f"{key}: {int((v < 0).sum())} negative variances" for key, v in values.items()
               if key.endswith(".running_var") and (v < 0).any()]
    if broken:
        raise ValueError(f"{path} holds broken weights ({len(broken)} tensors; a diverged "
                         f"training?): the model would give NaN flow.\n  {_listed(broken)}")
    problems = misshaped + unused + missing
    if problems:
        encoder, decoder = _describe(state)
        hint = RECIPES.get((encoder, decoder))
        hint = f" It looks like a checkpoint of {hint}." if hint else ""
        raise ValueError(f"{path} does not fit the model: {len(misshaped)} tensors mis-shaped, "
                         f"{len(unused)} unused, {len(missing)} missing (convert with the recipe "
                         f"it was trained with).{hint}\n  {_listed(problems)}")
    by_layer = collections.defaultdict(dict)
    for key, (layer, index) in mapping.items():
        by_layer[id(layer)][index] = values[key]
    for part_model in parts.values():
        for layer in _weight_layers(part_model):
            weights = by_layer[id(layer)]
            layer.set_weights([weights[i] for i in range(len(layer.weights))])
    return {"tensors": len(mapping), "dropped": dropped}


def _write_config(config, out):
    """config.json beside `out`, as train.py writes it into a run directory: `runtime` and
    `python -m export` read the recipe from there."""
    path = os.path.join(os.path.dirname(os.path.abspath(out)), rundir.CONFIG_FILE)
    current = json.loads(config.to_json_best_effort())
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                earlier = json.load(f)
        except (ValueError, OSError) as error:
            raise ValueError(f"{path} beside --out does not read as a config ({error}): "
                             "remove it, or write --out into another folder.") from error
        if earlier != current:
            changes = "; ".join(rundir.config_changes(earlier, current)[:5])
            raise ValueError(f"{path} holds another recipe's config ({changes}): write --out "
                             "into another folder (the model's config.json goes beside it).")
    with rundir.whole_file(path) as partial, open(partial, "w", encoding="utf-8") as f:
        json.dump(current, f, indent=1)
    return path


def convert(checkpoint, config, out, encoder_only=False, overwrite=False):
    """Converts a reference checkpoint into a .keras file (with config.json beside it).

    Args:
        checkpoint: a reference .pth / .pth.tar file (whole CMP, or an image encoder alone).
        config: the recipe the checkpoint was trained with (configs/*.py).
        out: the .keras file to write: the whole CMP (`cmp_tf.runtime.Propagator`,
            `python -m export` load it), or with `encoder_only` the image encoder in stock
            Keras layers (`cmp_tf.transfer` loads it). An existing file is replaced only
            with `overwrite`.
    Returns:
        {"checkpoint", "out", "config", "tensors", "dropped"}.
    """
    out = os.fspath(out)
    if not out.endswith(".keras"):
        raise ValueError(f"--out={out} must be a .keras file.")
    rundir.check_file_path(out, "--out")
    if os.path.exists(out) and not overwrite:
        raise ValueError(f"--out={out} exists: pass --overwrite to replace it, or choose another "
                         "--out.")
    check_config(config)
    state = read_state_dict(checkpoint)  # fails fast, before TensorFlow is imported
    from cmp_tf import models
    from cmp_tf.models import layers

    model = models.build_encoder(config) if encoder_only else models.build_cmp(config)
    report = load_state(model, state, os.fspath(checkpoint), encoder_only)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    config_path = _write_config(config, out)
    # whole or not at all: a rerun refuses an existing --out, so a cut-short one would stay
    rundir.save_model(layers.plain_keras_copy(model) if encoder_only  # loads without cmp_tf
                      else model, out)
    return {"checkpoint": os.fspath(checkpoint), "out": out, "config": config_path, **report}


def main(argv):
    from absl import app
    from absl import flags

    from cmp_tf import cli

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
    flag = flags.FLAGS
    if flag.config is None:
        raise app.UsageError("Name the recipe the checkpoint was trained with: --config=configs/"
                             "resnet50_semiauto.py (or alexnet_yfcc.py, resnet50_yfcc.py).")
    name = "encoder.keras" if flag.encoder_only else "model.keras"
    stem = os.path.basename(flag.checkpoint).split(".")[0] or "reference"
    out = flag.out or os.path.join("runs", stem, name)
    config = cli.config_of(flag["config"])
    report = convert(flag.checkpoint, config, out, flag.encoder_only, flag.overwrite)
    dropped = len(report["dropped"])
    print(f"{report['tensors']} tensors of {flag.checkpoint} -> {out} "
          f"({dropped} left out: num_batches_tracked"
          f"{', the sparse encoder and decoder' if flag.encoder_only else ''}); "
          f"recipe in {report['config']}")


def _define_flags():
    from absl import flags

    from cmp_tf import cli

    flags.DEFINE_string("checkpoint", None, "Reference checkpoint (.pth / .pth.tar), whole or "
                        "tools/weight_process.py's image encoder.", required=True)
    cli.define_config("config", None, "The recipe it was trained with (configs/).",
                      lock_config=True)
    flags.DEFINE_string("out", None, ".keras file to write (config.json goes beside it); "
                        "default runs/<checkpoint name>/model.keras (encoder.keras).")
    flags.DEFINE_bool("encoder_only", False, "Write the image encoder alone (for transfer).")
    flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.")


if __name__ == "__main__":
    from cmp_tf import cli

    _define_flags()
    cli.run(main)
