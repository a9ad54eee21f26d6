"""Reference checkpoints -> cmp_tf (issue #9): the torch-free reader, the key mapping, parity with
the reference's own outputs (fixtures written once by benchmarks/reference_parity.py with the
original code), and the converted model through export and the runtime."""
import collections
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from tests.helpers import load_config

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOGITS_REL, FLOW_PX = 1e-4, 0.01  # the bounds
SIZE = 64  # the smallest side the ResNet-50 + skip-layer recipe takes


def _fixture(name):
    return os.path.join(DATA, name)


# ------------------------------------------------------------------ the reader

@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_reader_matches_torch_on_both_layouts(layout):
    from cmp_tf import torch_checkpoint

    loaded = torch_checkpoint.load(_fixture(f"torch_formats_{layout}.pth"))
    expected = np.load(_fixture("torch_formats.npz"))
    state = loaded["state_dict"]
    assert isinstance(state, collections.OrderedDict) and list(state) == list(expected)
    for key in expected:
        assert state[key].dtype == expected[key].dtype, key
        np.testing.assert_array_equal(state[key], expected[key], err_msg=key)
    assert state["module.transposed"].flags.c_contiguous  # a strided view, copied out
    np.testing.assert_array_equal(state["module.transposed"], state["module.weight"].T)
    assert state["module.bfloat16"].dtype == np.float32  # widened
    assert state["module.scalar"].shape == () and state["module.empty"].shape == (0, 3)
    assert loaded["step"] == 7
    assert loaded["optimizer"]["param_groups"][0] == {"lr": 0.1, "momentum": 0.9,
                                                      "nesterov": False, "params": [0, 1]}


@pytest.mark.parametrize("legacy", [True, False])
def test_writer_round_trips(tmp_path, legacy):
    from cmp_tf import torch_checkpoint

    rng = np.random.default_rng(0)
    obj = {"step": 2**40, "state_dict": collections.OrderedDict(
        [("a", rng.normal(size=(3, 4)).astype(np.float32)), ("b", np.arange(3)),
         ("c", np.array(2.5)), ("d", np.array([True, False]))]),
           "meta": [1.5, None, "x", (1, 2)]}
    path = tmp_path / "w.pth"
    torch_checkpoint.save(obj, path, legacy=legacy)
    back = torch_checkpoint.load(path)
    assert back["step"] == 2**40 and back["meta"] == [1.5, None, "x", (1, 2)]
    for key, value in obj["state_dict"].items():
        assert back["state_dict"][key].dtype == value.dtype
        np.testing.assert_array_equal(back["state_dict"][key], value)


def test_a_legacy_storage_view_reads_its_slice_of_the_root_storage():
    """torch <= 1.5 pickled views of a storage as (key, offset, numel) of the root's bytes."""
    import io

    from cmp_tf import torch_checkpoint

    storages = {}
    unpickler = torch_checkpoint._Unpickler(io.BytesIO(b""), "view.pth", storages)
    floats = torch_checkpoint._StorageType("FloatStorage")
    view = unpickler.persistent_load(("storage", floats, "0", "cpu", 6, ("view", 2, 3)))
    storages["0"].data = np.arange(6, dtype=np.float32)  # the file's bytes, read afterwards
    tensor = torch_checkpoint._rebuild_tensor(view, 1, (2,), (1,))
    np.testing.assert_array_equal(torch_checkpoint._array(tensor, "view.pth"), [3, 4])


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _legacy_file(path, main_pickle):
    with open(path, "wb") as f:
        from cmp_tf import torch_checkpoint

        for head in (torch_checkpoint.MAGIC_NUMBER, torch_checkpoint.PROTOCOL_VERSION, {}):
            f.write(pickle.dumps(head, protocol=2))
        f.write(main_pickle)


@pytest.mark.parametrize("layout", ["legacy", "zip", "plain pickle"])
def test_malicious_pickle_is_refused_without_running(tmp_path, layout):
    from cmp_tf import convert
    from cmp_tf import torch_checkpoint

    marker = tmp_path / "pwned"
    payload = pickle.dumps({"state_dict": _Exploit(marker)}, protocol=2)
    path = tmp_path / "evil.pth"
    if layout == "legacy":
        _legacy_file(path, payload)
    elif layout == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("evil/data.pkl", payload)
    else:
        path.write_bytes(payload)
    with pytest.raises(ValueError) as error:
        convert.read_state_dict(path)
    assert not marker.exists()
    if layout != "plain pickle":  # a plain pickle fails earlier: no magic number
        assert isinstance(error.value, torch_checkpoint.UnsafeCheckpointError)
        assert "system" in str(error.value) and str(path) in str(error.value)
    else:
        assert str(path) in str(error.value)


def test_bad_files_fail_naming_the_file(tmp_path):
    from cmp_tf import convert
    from cmp_tf import torch_checkpoint

    with pytest.raises(ValueError, match="missing.pth does not exist"):
        convert.read_state_dict(tmp_path / "missing.pth")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint at all")
    with pytest.raises(ValueError, match="notes.pth is not a PyTorch checkpoint"):
        convert.read_state_dict(text)
    data = pathlib.Path(_fixture("torch_formats_legacy.pth")).read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[:-20])  # an interrupted download
    with pytest.raises(ValueError, match="cut.pth ends inside storage"):
        convert.read_state_dict(cut)
    with pytest.raises(ValueError, match=r"is a folder \(expected a PyTorch checkpoint\)"):
        convert.read_state_dict(tmp_path)
    # Zip archives whose pickle or member is damaged: named, not a pickle or zip error.
    garbage = tmp_path / "garbage.pth"
    with zipfile.ZipFile(garbage, "w") as archive:
        archive.writestr("arch/data.pkl", b"garbage")
    with pytest.raises(ValueError, match="garbage.pth is a corrupt PyTorch checkpoint"):
        convert.read_state_dict(garbage)
    good = tmp_path / "good.pth"
    torch_checkpoint.save({"w": np.arange(64, dtype=np.float32)}, good, legacy=False)
    flipped = bytearray(good.read_bytes())
    member = flipped.find(np.arange(64, dtype=np.float32).tobytes())  # stored, not deflated
    flipped[member + 9] ^= 0xFF
    good.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match=r"good.pth is a corrupt PyTorch checkpoint "
                                         r"\(BadZipFile: Bad CRC-32"):
        convert.read_state_dict(good)


def test_files_that_are_not_checkpoints_say_what_they_are(tmp_path):
    from cmp_tf import convert
    from cmp_tf import torch_checkpoint

    whole = tmp_path / "whole.pth"
    torch_checkpoint.save({"w": np.arange(4096, dtype=np.float32)}, whole, legacy=False)
    files = {"empty": (b"", r"is empty \(0 bytes\)"),
             "cut": (whole.read_bytes()[:9000], r"starts as a zip archive.*truncated download"),
             "lfs": (b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 9\n",
                     "is a Git LFS pointer"),
             "page": (b"\n<!DOCTYPE html><html><body>Virus scan warning</body></html>",
                      "is an HTML page"),
             "gz": (b"\x1f\x8b\x08\x00" + bytes(40), "is gzip-compressed")}
    for name, (data, message) in files.items():
        (tmp_path / f"{name}.pth").write_bytes(data)
        with pytest.raises(ValueError, match=rf"{name}.pth {message}"):
            convert.read_state_dict(tmp_path / f"{name}.pth")
    legacy = pathlib.Path(_fixture("torch_formats_legacy.pth")).read_bytes()
    (tmp_path / "half.pth").write_bytes(legacy[:len(legacy) // 3])  # inside its main pickle
    with pytest.raises(ValueError, match=r"half.pth is a PyTorch checkpoint cut short or "
                                         r"damaged"):
        convert.read_state_dict(tmp_path / "half.pth")


def test_a_pytorch_checkpoint_given_as_a_model_says_to_convert_it(tmp_path):
    from cmp_tf import rundir

    checkpoint = tmp_path / "ckpt_iter_42000.pth.tar"
    checkpoint.write_bytes(b"PK")
    for read in (rundir.resolve_model_path, rundir.encoder_file):
        with pytest.raises(ValueError, match=r"a PyTorch checkpoint: convert it first, with "
                                             r"python -m cmp_tf.convert --checkpoint=.*42000"):
            read(checkpoint)


def test_tensor_strides_cannot_read_outside_their_storage(tmp_path):
    from cmp_tf import torch_checkpoint

    path = tmp_path / "s.pth"
    torch_checkpoint.save({"w": np.zeros(4, np.float32)}, path)
    raw = path.read_bytes()
    # Size (4,) -> (400,): the same storage of 4 elements, read far past its end.
    four = pickle.BININT + struct.pack("<i", 4)
    assert raw.count(four) >= 2
    at = raw.index(pickle.MARK + four + pickle.TUPLE)  # the size tuple (4,)
    bad = raw[:at] + pickle.MARK + pickle.BININT + struct.pack("<i", 400) + raw[at + 6:]
    path.write_bytes(bad)
    with pytest.raises(ValueError, match="reads past the end of its storage"):
        torch_checkpoint.load(path)


# ------------------------------------------------------------------ unwrapping and mapping

def test_unwrap_removes_prefix_and_nesting():
    from cmp_tf import convert

    w = np.ones((2, 2), np.float32)
    nested = {"step": 3, "optimizer": {"state": {}},
              "state_dict": collections.OrderedDict([("module.a.weight", w),
                                                     ("module.module.b", w)])}
    assert list(convert.unwrap(nested, "f")) == ["a.weight", "b"]
    assert list(convert.unwrap({"a.weight": w}, "f")) == ["a.weight"]
    # another trainer's nesting, torch.compile's and Lightning's prefixes
    assert list(convert.unwrap({"step": 3, "model": {"_orig_mod.a": w}}, "f")) == ["a"]
    assert list(convert.unwrap({"model.module.a": w}, "f")) == ["a"]
    with pytest.raises(ValueError, match="f is not a state dict: entries .*'step'"):
        convert.unwrap({"step": 3, "a": w}, "f")
    with pytest.raises(ValueError, match=r"f holds several state dicts \(model, ema\)"):
        convert.unwrap({"model": {"a": w}, "ema": {"a": w}}, "f")
    with pytest.raises(ValueError, match="f holds an empty state dict"):
        convert.unwrap({"state_dict": {}}, "f")
    with pytest.raises(ValueError, match="holds a.weight twice"):
        convert.unwrap({"module.a.weight": w, "a.weight": w}, "f")


def test_reference_module_rules():
    from cmp_tf.convert import reference_module as ref

    assert ref("image_encoder", "layer3_0_downsample_0") == "layer3.0.downsample.0"
    assert ref("image_encoder", "layer4_2_bn3") == "layer4.2.bn3"
    assert ref("image_encoder", "conv1_bn", {"conv1"}) == "conv1.1"
    assert ref("image_encoder", "fc7", {"fc7"}) == "fc7.0"
    assert ref("image_encoder", "conv8", {"conv1"}) == "conv8"
    assert ref("sparse_encoder", "conv2_bn") == "features.5"
    assert ref("decoder", "decoder1_conv3") == "decoder1.6"
    assert ref("decoder", "decoder8_conv2_bn") == "decoder8.5"
    assert ref("decoder", "skipconv4_bn", {"skipconv4"}) == "skipconv4.1"
    assert ref("decoder", "head") == "head"


def test_mask_channels_fold_into_one():
    from cmp_tf import convert

    class Var:
        name, shape = "kernel", (5, 5, 3, 16)

    class Conv:
        name = "conv1"

    w = np.random.default_rng(0).normal(size=(16, 4, 5, 5)).astype(np.float32)
    kernel = convert._to_keras("sparse_encoder", Conv, Var, w)
    assert kernel.shape == (5, 5, 3, 16)
    np.testing.assert_array_equal(kernel[:, :, :2], w[:, :2].transpose(2, 3, 1, 0))
    np.testing.assert_allclose(kernel[:, :, 2], (w[:, 2] + w[:, 3]).transpose(1, 2, 0))
    back = convert._to_torch("sparse_encoder", Conv, Var, kernel, mask_split=0.25)
    np.testing.assert_allclose(back[:, 2] + back[:, 3], w[:, 2] + w[:, 3], rtol=1e-6)


@pytest.fixture(scope="module")
def reference_keys():
    import json

    with open(_fixture("reference_keys.json")) as f:
        return json.load(f)


def _synthetic_state(keys, value=0.01):
    """A state dict with exactly the reference's keys and shapes (constant, memory-light)."""
    return collections.OrderedDict(
        (k, np.broadcast_to(np.float32(value), shape) if not k.endswith("num_batches_tracked")
         else np.array(0, np.int64)) for k, shape in keys.items())


@pytest.mark.parametrize("recipe", ["alexnet_yfcc", "resnet50_yfcc", "resnet50_semiauto"])
def test_every_reference_key_maps_onto_our_layers(recipe, reference_keys):
    """The keys and shapes of the reference's own state dicts (PyTorch, recorded once) load
    onto each recipe without a missing, unused or mis-shaped tensor."""
    from cmp_tf import convert
    from cmp_tf import models

    keys = reference_keys[recipe]
    assert all(k.startswith("module.") for k in keys)
    model = models.build_cmp(load_config(recipe))
    state = convert.unwrap({"state_dict": _synthetic_state(keys)}, recipe)
    report = convert.load_state(model, state, recipe)
    assert report["tensors"] + len(report["dropped"]) == len(keys)
    assert all(k.endswith("num_batches_tracked") for k in report["dropped"])
    # And our inverse mapping writes exactly the reference's keys and shapes.
    ours = convert.to_reference(model)
    assert {f"module.{k}": list(v.shape) for k, v in ours.items()} == keys


# ------------------------------------------------------------------ parity with the reference

def _chain(model, names, x):
    """`model`'s layers `names` applied in turn to `x` (the real layers, weights shared)."""
    for name in names:
        x = model.get_layer(name)(x)
    return x


def _parts():
    """Our side of each fixture part: {name: (part, keras model, NCHW inputs -> our inputs)}."""
    import keras

    from cmp_tf.models import decoders
    from cmp_tf.models import image_encoders
    from cmp_tf.models import sparse_encoders

    nhwc = lambda x: x.transpose(0, 2, 3, 1)  # noqa: E731
    parts = {"shallownet": ("sparse_encoder", sparse_encoders.shallownet8x(),
                            lambda x: [nhwc(x[0])[..., :3]])}  # (u, v, m, m) -> (u, v, m)
    alex, image = image_encoders.alexnet_fcn_32x(), keras.Input((None, None, 3))
    pooled = _chain(alex, ["conv1_pad", "conv1", "conv1_bn", "conv1_relu", "pool1_pad", "pool1"],
                    image)
    parts["alexnet_conv1"] = ("image_encoder", keras.Model(image, pooled),
                              lambda x: [nhwc(x[0])])
    for name, block, strides, dilation in (("bottleneck_dilated", "layer3_0", 1, 2),
                                           ("bottleneck_strided", "layer2_0", 2, 1)):
        inp = keras.Input((None, None, 16))
        out = image_encoders._bottleneck(inp, 8, strides=strides, dilation=dilation,
                                         downsample=True, name=block, gain=0.02)
        parts[name] = ("image_encoder", keras.Model(inp, out), lambda x: [nhwc(x[0])])
    # The skip-layer decoder's last stage: upsample to the stride-2 skip, fuse, head.
    decoder = decoders.skip_layer(8, 6, (256, 64))
    f4, skip2 = keras.Input((None, None, 128)), keras.Input((None, None, 64))
    up = decoder.get_layer("up2")([f4, skip2])
    s2 = _chain(decoder, ["skipconv2", "skipconv2_bn", "skipconv2_relu"], skip2)
    x = _chain(decoder, ["fusion2", "fusion2_bn", "fusion2_relu", "head"],
               decoder.get_layer("cat2")([up, s2]))
    parts["decoder_tail"] = ("decoder", keras.Model([f4, skip2], x),
                             lambda x: [nhwc(x[0]), nhwc(x[1])])
    return parts


def test_parts_reproduce_the_reference_outputs():
    """Each small part of the reference (real PyTorch weights and outputs, legacy layout),
    converted onto our builders' layers, gives the reference's outputs to 1e-4 of their range."""
    from cmp_tf import convert
    from cmp_tf import torch_checkpoint

    states = torch_checkpoint.load(_fixture("reference_parts.pth"))
    arrays = np.load(_fixture("reference_parts.npz"))
    parts = _parts()
    assert set(states) == set(parts)
    for name, (part, model, feed) in parts.items():
        state = convert.unwrap(states[name], name)
        report = convert.load_state(model, state, name, parts={part: model})
        assert report["tensors"] == sum(not k.endswith("num_batches_tracked") for k in state)
        inputs = [arrays[f"{name}/input{i}"] for i in range(2) if f"{name}/input{i}" in arrays]
        got = np.asarray(model(feed(inputs) if len(inputs) > 1 else feed(inputs)[0],
                               training=False))
        want = arrays[f"{name}/output"].transpose(0, 2, 3, 1)
        assert got.shape == want.shape, name
        rel = np.abs(got - want).max() / np.abs(want).max()
        assert rel < LOGITS_REL, f"{name}: max |difference| / max |output| = {rel:.2e}"


def test_load_state_names_missing_extra_and_misshaped(reference_keys):
    from cmp_tf import convert
    from cmp_tf import models

    config = load_config("resnet50_yfcc")
    model = models.build_cmp(config)
    state = convert.unwrap(_synthetic_state(reference_keys["resnet50_yfcc"]), "f")
    cases = {"missing": lambda s: s.pop("flow_decoder.head.bias"),
             "extra": lambda s: s.__setitem__("flow_decoder.head2.weight", np.zeros(3)),
             "misshaped": lambda s: s.__setitem__("image_encoder.conv5.weight",
                                                  np.zeros((128, 2048, 1, 1), np.float32))}
    messages = {"missing": "flow_decoder.head.bias: missing from the checkpoint",
                "extra": "flow_decoder.head2.weight: in the checkpoint, no layer of ours",
                "misshaped": "image_encoder.conv5.weight: shape (128, 2048, 1, 1) in the "
                             "checkpoint, (256, 2048, 1, 1) for our conv5"}  # torch's layout
    for case, edit in cases.items():
        broken = collections.OrderedDict(state)
        edit(broken)
        with pytest.raises(ValueError, match="ckpt.pth does not fit the model") as error:
            convert.load_state(model, broken, "ckpt.pth")
        assert messages[case] in str(error.value), case
        counts = {"misshaped": "1 tensors mis-shaped, 0 unused, 0 missing",
                  "extra": "0 tensors mis-shaped, 1 unused, 0 missing",
                  "missing": "0 tensors mis-shaped, 0 unused, 1 missing"}
        assert counts[case] in str(error.value)
    broken = collections.OrderedDict(state)
    broken["image_encoder.conv1.weight"] = np.array(broken["image_encoder.conv1.weight"])
    broken["image_encoder.conv1.weight"][0, 0, 0, :2] = (np.nan, np.inf)
    broken["image_encoder.bn1.running_var"] = -np.array(broken["image_encoder.bn1.running_var"])
    with pytest.raises(ValueError, match=r"ckpt.pth holds broken weights \(2 tensors; a "
                                         r"diverged training\?\)") as error:
        convert.load_state(model, broken, "ckpt.pth")
    assert "image_encoder.conv1.weight: 2 NaN or infinite values" in str(error.value)
    assert "image_encoder.bn1.running_var: 64 negative variances" in str(error.value)
    # num_batches_tracked: present or not, never a problem.
    quiet = collections.OrderedDict((k, v) for k, v in state.items()
                                    if not k.endswith("num_batches_tracked"))
    assert convert.load_state(model, quiet, "f")["dropped"] == []


def test_wrong_recipe_fails_with_a_hint(reference_keys):
    from cmp_tf import convert
    from cmp_tf import models

    alexnet = convert.unwrap(_synthetic_state(reference_keys["alexnet_yfcc"]), "alex.pth")
    model = models.build_cmp(load_config("resnet50_semiauto"))
    with pytest.raises(ValueError, match="alex.pth does not fit") as error:
        convert.load_state(model, alexnet, "alex.pth")
    assert "looks like a checkpoint of configs/alexnet_yfcc.py" in str(error.value)
    assert "image_encoder.conv1.0.weight: in the checkpoint, no layer" in str(error.value)
    for field, value, message in (("image_encoder", "mobilenet_v3", "no reference checkpoints"),
                                  ("head", "regression", "head='regression' has no reference"),
                                  ("options.bins.nearest_prior", True, "adds inputs the reference")):
        config = load_config("cpu_bins" if field == "image_encoder" else "alexnet_yfcc")
        *parents, key = field.split(".")
        section = config.model
        for parent in parents:
            section = section[parent]
        section[key] = value
        with pytest.raises(ValueError, match=message):
            convert.check_config(config)
    config = load_config("alexnet_yfcc")
    config.flow.fmax = 30.0  # no weight holds it: every flow would be 0.6 of the model's
    with pytest.raises(ValueError, match=r"config.flow.fmax=30.0: the reference's checkpoints"):
        convert.check_config(config)


# ------------------------------------------------------------------ end to end

def _randomized(model, seed=0):
    """Random weights and BN statistics (Keras' init leaves moving stats at 0 / 1)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for sub in getattr(layer, "layers", [layer]):
            if type(sub).__name__ == "BatchNorm":
                c = sub.weights[0].shape[0]
                sub.set_weights([rng.normal(1, 0.1, c), rng.normal(0, 0.1, c),
                                 rng.normal(0, 0.1, c), rng.uniform(0.5, 2, c)])
            elif type(sub).__name__ == "Conv2D":  # logits of a few units, flows of pixels
                scale = 1000 if sub.name == "head" else 10
                sub.set_weights([w * scale for w in sub.get_weights()])
    return model


@pytest.fixture(scope="module")
def semiauto(tmp_path_factory):
    """Our ResNet-50 + skip-layer model with random weights, written as the reference writes
    checkpoints (legacy layout, `module.` keys under `state_dict`, with step and optimizer),
    and the inputs and outputs to compare: (config, model, checkpoint path, inputs, outputs)."""
    from cmp_tf import convert
    from cmp_tf import models
    from cmp_tf import torch_checkpoint

    config = load_config("resnet50_semiauto")
    model = _randomized(models.build_cmp(config))
    state = convert.to_reference(model, mask_split=0.3)
    folder = tmp_path_factory.mktemp("reference")
    path = str(folder / "ckpt_iter_42000.pth.tar")
    torch_checkpoint.save({"step": 42000, "state_dict": collections.OrderedDict(
        (f"module.{k}", v) for k, v in state.items()),
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.001, "params": [0]}]}}, path)
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    sparse = np.zeros((2, SIZE, SIZE, 3), np.float32)
    sparse[:, 10, 20], sparse[:, 40, 50] = (4.0, -3.0, 1.0), (-6.0, 2.0, 1.0)
    inputs = {"image": image, "sparse": sparse}
    outputs = {k: np.asarray(v) for k, v in model(inputs, training=False).items()}
    assert np.abs(outputs["logits"]).max() > 1 and np.abs(outputs["flow"]).max() > 0.5
    return config, model, path, inputs, outputs


@pytest.mark.slow
def test_command_line_round_trip(semiauto, tmp_path):
    """python -m cmp_tf.convert on a reference-style checkpoint gives a model with the same
    outputs, a config.json beside it, and loads where cmp_tf models load."""
    import keras

    from cmp_tf import rundir

    _, _, path, inputs, outputs = semiauto
    out = tmp_path / "run" / "model.keras"
    result = subprocess.run(
        [sys.executable, "-m", "cmp_tf.convert", f"--checkpoint={path}",
         "--config=configs/resnet50_semiauto.py", f"--out={out}"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "383 tensors" in result.stdout and "72 left out" in result.stdout
    converted = keras.models.load_model(out)
    got = converted(inputs, training=False)
    np.testing.assert_allclose(got["logits"], outputs["logits"], atol=1e-5 * np.abs(
        outputs["logits"]).max())
    np.testing.assert_allclose(got["flow"], outputs["flow"], atol=1e-4)
    config, found = rundir.read_config(str(out))
    assert found and config.model.decoder == "skip_layer"
    again = subprocess.run(
        [sys.executable, "-m", "cmp_tf.convert", f"--checkpoint={path}",
         "--config=configs/resnet50_semiauto.py", f"--out={out}", "--encoder_only"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert again.returncode == 1 and f"--out={out} exists: pass --overwrite" in again.stderr
    assert "Traceback" not in again.stderr


@pytest.mark.slow
def test_encoder_only_and_weight_process_files(semiauto, tmp_path):
    """--encoder_only from a whole checkpoint, and tools/weight_process.py's encoder-only file
    (no prefix, zip layout of newer torch), give our image encoder; transfer loads it."""
    from cmp_tf import convert
    from cmp_tf import torch_checkpoint
    from cmp_tf import transfer

    config, model, path, inputs, _ = semiauto
    want = {k: np.asarray(v) for k, v in model.get_layer("image_encoder")(
        inputs["image"], training=False).items()}
    encoder_state = collections.OrderedDict(
        (k[len("image_encoder."):], v) for k, v in convert.to_reference(model).items()
        if k.startswith("image_encoder."))
    processed = tmp_path / "convert_iter_42000.pth.tar"
    torch_checkpoint.save(encoder_state, processed, legacy=False)
    for source, name in ((path, "whole"), (processed, "processed")):
        out = tmp_path / name / "encoder.keras"
        report = convert.convert(source, config, out, encoder_only=True)
        assert report["tensors"] == len([k for k in encoder_state
                                         if not k.endswith("num_batches_tracked")])
        encoder, _ = transfer.load_encoder(str(out))
        got = encoder(inputs["image"], training=False)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], atol=1e-5 * np.abs(want[key]).max())
    with pytest.raises(ValueError, match="holds an image encoder alone .* --encoder_only"):
        convert.convert(processed, config, tmp_path / "full" / "model.keras")


@pytest.mark.slow
def test_converted_model_exports_and_serves(semiauto, tmp_path):
    """The converted model goes through export (TFLite, ONNX) with the parity report, and
    Propagator serves the .keras and the exported files alike."""
    from cmp_tf import convert
    from cmp_tf import runtime
    from export import export_lib
    from export import parity

    config, _, path, _, _ = semiauto
    keras_path = str(tmp_path / "model.keras")
    convert.convert(path, config, keras_path)
    model, config, _ = export_lib.load_checkpoint(keras_path)
    report = export_lib.export(model, config, str(tmp_path / "export"), formats=("tflite", "onnx"),
                               size=(SIZE, SIZE), parity_samples=2, repeats=1, encoder=False,
                               source=keras_path, log=lambda _: None)
    for row in report["rows"]:
        assert row["mean_abs_px"] < parity.FLOAT32_MEAN_TOLERANCE_PX, row["artifact"]
        assert row["max_abs_px"] < FLOW_PX, row["artifact"]
    image = np.random.default_rng(2).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    points = np.array([[20, 10], [50, 40]], np.float32)
    vectors = np.array([[4, -3], [-6, 2]], np.float32)
    flows = [runtime.Propagator(p).propagate(image, points, vectors)
             for p in (keras_path, str(tmp_path / "export" / "model.tflite"),
                       str(tmp_path / "export" / "model.onnx"))]
    assert flows[0].shape == (SIZE, SIZE, 2) and np.abs(flows[0]).max() > 0.1
    for flow in flows[1:]:
        assert np.abs(flow - flows[0]).max() < FLOW_PX


def test_a_config_json_beside_out_that_does_not_fit_is_named(tmp_path):
    from cmp_tf import convert

    config = load_config("alexnet_yfcc")
    out = tmp_path / "model.keras"
    (tmp_path / "config.json").write_text("")  # a conversion killed while writing it
    with pytest.raises(ValueError, match=r"config.json beside --out does not read as a config"):
        convert._write_config(config, out)
    (tmp_path / "config.json").unlink()
    convert._write_config(config, out)
    config.data.batch_size = 3
    with pytest.raises(ValueError, match=r"holds another recipe's config \(config.data."
                                         r"batch_size: \d+ -> 3\)"):
        convert._write_config(config, out)
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no partial file left
