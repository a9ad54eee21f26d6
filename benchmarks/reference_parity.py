r"""Parity of converted reference checkpoints: the original PyTorch CMP and cmp_tf on the same
real frames and guidance, through `python -m cmp_tf.convert`'s code path (issue #9).

  python benchmarks/reference_parity.py --reference=/path/to/conditional-motion-propagation \
      [--torch_python=/tmp/venvs/torch/bin/python] [--recipes=alexnet_yfcc,resnet50_semiauto,
      resnet50_yfcc] [--size=384] [--samples=2] [--out=runs/benchmarks/reference_parity.json]
  python benchmarks/reference_parity.py --reference=... --fixtures=tests/data   # CI fixtures

--reference is a checkout of XiaohangZhan/conditional-motion-propagation (never committed here);
its model code is imported, unmodified, by a second Python that has PyTorch (--torch_python:
torch, numpy and pillow, which the reference's flowlib imports). Per recipe that side builds the
reference CMP (models.modules.CMP inside its FixModule wrapper, so keys carry `module.`), gives
it random weights, calibrates BatchNorm and saves it as the reference saved its checkpoints: the
legacy torch.save layout, state dict under `state_dict` beside `step` and `optimizer`. It runs
it on CPU in eval mode and reads flow out with the reference's own Fuser (softmax expectation)
and align-corners upsampling, as CMP.eval does. This side (TensorFlow) converts the file with
cmp_tf.convert, loads the .keras file it wrote and compares logits and flow:
  logits_rel   max |logits difference| / max |reference logits| (issue bound 1e-4)
  flow_max_px, flow_mean_px   max and mean |flow difference| in pixels (bound 0.01 px)
Inputs: centre crops of the embedded carphone clip (cmp_tf/data/samples/, never trained on),
with the recipe's guidance (grid + watershed on DIS flow) from our validation pipeline; the
reference takes them as it did in training: ImageNet-normalized images, sparse (u·m, v·m, m, m).

Weights: Xavier-normal with gain --gain (default 1), biases N(0, 0.1), BN gamma N(1, 0.1) and
beta N(0, 0.1); then BN running statistics are the exact mean and variance over the inputs
(train-mode pass, momentum None) and the model goes to eval. The reference's own init (gain
0.02) makes the heads' logits about 50x smaller, the read-out flow nearly zero everywhere, and
so a flow parity check nearly vacuous; gain 1 gives logits of a few units and flows of pixels.

--fixtures writes the small files tests/test_convert.py checks in CI, where PyTorch is absent:
reference_parts.pth (legacy layout) with parts of the reference at small sizes (ShallowNet,
AlexNet conv1 + pool1, a dilated and a strided ResNet bottleneck with reduced widths, the
skip-layer decoder's last stage with 6 outputs), reference_parts.npz (their inputs and
outputs), reference_keys.json (every key and shape of the three recipes' state dicts) and
torch_formats_{legacy,zip}.pth + torch_formats.npz (dtypes, views, strides, nesting).

Why benchmarks/: like torch_reference.py it measures our code against the reference's with a
second framework installed outside the project; the repository has no tools/ folder, and
nothing here is imported by the library or by the tests (they read only its outputs).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Each recipe's reference module parameters (its experiments/*/config.yaml, docs/reference.md §4).
REFERENCE_PARAMS = {
    "alexnet_yfcc": dict(image_encoder="alexnet_fcn_32x", sparse_encoder="shallownet32x",
                         flow_decoder="MotionDecoderPlain", decoder_combo=[1, 2, 4],
                         skip_layer=False),
    "resnet50_yfcc": dict(image_encoder="resnet50", sparse_encoder="shallownet8x",
                          flow_decoder="MotionDecoderPlain", decoder_combo=[1, 2, 4],
                          skip_layer=False),
    "resnet50_semiauto": dict(image_encoder="resnet50", sparse_encoder="shallownet8x",
                              flow_decoder="MotionDecoderSkipLayer", decoder_combo=[1, 2, 4, 8],
                              skip_layer=True),
}
NBINS, FMAX = 99, 50.0
MEAN, DIV = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
LOGITS_REL_BOUND, FLOW_BOUND_PX = 1e-4, 0.01  # the bounds


# ------------------------------------------------------------------ the PyTorch side

def _reference_modules(checkout):
    """The reference's `models.modules` and `models.backbone`, imported without running
    models/__init__.py (it imports the trainer's utils: OpenCV, CUDA-only code)."""
    import importlib
    import types

    checkout = os.path.abspath(checkout)
    if not os.path.isfile(os.path.join(checkout, "models", "modules", "cmp.py")):
        raise SystemExit(f"--reference={checkout} is not a checkout of the reference "
                         "(no models/modules/cmp.py).")
    sys.path.insert(0, checkout)
    package = types.ModuleType("models")
    package.__path__ = [os.path.join(checkout, "models")]
    sys.modules["models"] = package
    backbone = importlib.import_module("models.backbone")
    modules = importlib.import_module("models.modules")
    return modules, backbone


def _reference_fuser(checkout, nbins, fmax):
    """The reference's Fuser (utils/visualize_utils.py), whose constructor calls .cuda():
    made a no-op while it is built, so it runs on CPU."""
    import importlib
    import types

    import torch

    package = types.ModuleType("utils")  # not utils/__init__.py: data_utils needs OpenCV
    package.__path__ = [os.path.join(os.path.abspath(checkout), "utils")]
    sys.modules["utils"] = package
    visualize = importlib.import_module("utils.visualize_utils")
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        return visualize.Fuser(nbins=nbins, fmax=fmax)
    finally:
        torch.Tensor.cuda = cuda


def _randomize(net, gain, generator):
    """Random weights that give logits of a few units (see the module docstring)."""
    import torch
    from torch import nn

    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_normal_(module.weight, gain=gain, generator=generator)
                if module.bias is not None:
                    module.bias.normal_(0.0, 0.1, generator=generator)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.normal_(1.0, 0.1, generator=generator)
                module.bias.normal_(0.0, 0.1, generator=generator)


def _calibrate(net, forward, inputs):
    """BN running statistics of `net` := the exact mean and variance of what `forward(*inputs)`
    feeds them; then eval mode."""
    import torch
    from torch import nn

    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one pass gives the batch's statistics
    net.train()
    for m in net.modules():
        if isinstance(m, nn.Dropout):
            m.eval()  # statistics of what eval mode will see
    with torch.no_grad():
        forward(*inputs)
    net.eval()
    for m in norms:
        m.momentum = 0.1


def _torch_inputs(image, sparse):
    """Our (image 0..255 NHWC, sparse (u, v, m) NHWC) -> the reference's NCHW inputs."""
    import torch

    image = (image - np.array(MEAN, np.float32)) / np.array(DIV, np.float32)
    mask = sparse[..., 2:3]
    sparse4 = np.concatenate([sparse[..., :2] * mask, mask, mask], -1)
    def nchw(x):
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float32))

    return nchw(image), nchw(sparse4)


def reference_side(args):
    """Builds, saves and runs the reference CMP of --recipe on --workdir/inputs.npz."""
    import torch

    torch.set_num_threads(args.threads)
    modules, _ = _reference_modules(args.reference)
    params = dict(REFERENCE_PARAMS[args.recipe], img_enc_dim=256, sparse_enc_dim=16,
                  output_dim=2 * NBINS, pretrained_image_encoder=False)
    generator = torch.Generator().manual_seed(args.seed)
    net = modules.CMP(params)
    _randomize(net, args.gain, generator)
    inputs = np.load(os.path.join(args.workdir, "inputs.npz"))
    image, sparse = _torch_inputs(inputs["image"], inputs["sparse"])
    _calibrate(net, net, [image, sparse])
    wrapped = modules.FixModule(net)  # as SingleStageModel wraps it: keys get "module."
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    checkpoint = os.path.join(args.workdir, "ckpt_iter_0.pth.tar")
    torch.save({"step": 0, "state_dict": wrapped.state_dict(),
                "optimizer": optimizer.state_dict()}, checkpoint,
               _use_new_zipfile_serialization=False)  # the layout of the 2019 checkpoints
    fuser = _reference_fuser(args.reference, NBINS, FMAX)
    start = time.perf_counter()
    with torch.no_grad():
        logits = wrapped(image, sparse)
        flow = fuser.convert_flow(logits)
        flow = torch.nn.functional.interpolate(flow, size=image.shape[2:4], mode="bilinear",
                                               align_corners=True)
    np.savez(os.path.join(args.workdir, "reference_outputs.npz"), logits=logits.numpy(),
             flow=flow.numpy(), seconds=time.perf_counter() - start)


# ------------------------------------------------------------------ CI fixtures (PyTorch side)

def _part_inputs(rng):
    """Small inputs for the fixture parts, NCHW as the reference takes them."""
    mask = (rng.uniform(size=(1, 1, 32, 32)) < 0.05).astype(np.float32)
    uv = rng.uniform(-20, 20, (1, 2, 32, 32)).astype(np.float32) * mask
    return {"shallownet": [np.concatenate([uv, mask, mask], 1)],
            "alexnet_conv1": [rng.normal(0, 1, (1, 3, 64, 64)).astype(np.float32)],
            "bottleneck_dilated": [np.abs(rng.normal(0, 1, (1, 16, 12, 12))).astype(np.float32)],
            "bottleneck_strided": [np.abs(rng.normal(0, 1, (1, 16, 12, 12))).astype(np.float32)],
            "decoder_tail": [np.abs(rng.normal(0, 1, (1, 128, 4, 4))).astype(np.float32),
                             np.abs(rng.normal(0, 1, (1, 64, 8, 8))).astype(np.float32)]}


def _fixture_parts(modules, backbone):
    """{name: (reference part attribute, {attribute: module}, forward)} at small sizes."""
    import torch
    from torch import nn

    resnet = sys.modules["models.backbone.resnet"]
    resnet.BN = nn.BatchNorm2d  # set by ResNet.__init__ in the reference

    def bottleneck(stride, dilation):
        down = nn.Sequential(nn.Conv2d(16, 32, 1, stride=stride, bias=False), nn.BatchNorm2d(32))
        block = resnet.Bottleneck(16, 8, stride=stride, downsample=down)
        if dilation > 1:  # what the reference's ResNet does to layer3 / layer4 blocks
            block.conv2.dilation, block.conv2.padding = (dilation, dilation), (dilation, dilation)
        return block

    alex = backbone.alexnet_fcn_32x(256)
    skip = modules.MotionDecoderSkipLayer(input_dim=8, output_dim=6)

    def tail(f4, layer2):
        up = nn.functional.interpolate(f4, size=layer2.shape[2:4], mode="bilinear",
                                       align_corners=True)
        return skip.head(skip.fusion2(torch.cat([up, skip.skipconv2(layer2)], 1)))

    dilated, strided = bottleneck(1, 2), bottleneck(2, 1)
    return {
        "shallownet": ("flow_encoder", modules.shallownet8x(16), None),
        "alexnet_conv1": ("image_encoder", nn.ModuleDict({"conv1": alex.conv1}),
                          lambda x: alex.pool1(alex.conv1(x))),
        "bottleneck_dilated": ("image_encoder", nn.ModuleDict({"layer3": nn.ModuleDict(
            {"0": dilated})}), dilated),
        "bottleneck_strided": ("image_encoder", nn.ModuleDict({"layer2": nn.ModuleDict(
            {"0": strided})}), strided),
        "decoder_tail": ("flow_decoder", nn.ModuleDict(
            {"skipconv2": skip.skipconv2, "fusion2": skip.fusion2, "head": skip.head}), tail),
    }


def _format_samples():
    """Tensors that exercise the reader: dtypes, a transposed view, an offset slice, a
    scalar, an empty tensor, a Parameter; nested like a training checkpoint."""
    import collections

    import torch

    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = collections.OrderedDict([
        ("module.weight", base), ("module.transposed", base.t()), ("module.slice", base[1:, 2:]),
        ("module.scalar", torch.tensor(3.5, dtype=torch.float64)),
        ("module.long", torch.arange(5)), ("module.bool", torch.tensor([True, False, True])),
        ("module.half", torch.linspace(-2, 2, 5).half()),
        ("module.bfloat16", torch.tensor([1.5, -0.25, 3.0], dtype=torch.bfloat16)),
        ("module.empty", torch.zeros(0, 3)), ("module.parameter", torch.nn.Parameter(
            torch.full((2, 2), 0.5)))])
    return {"step": 7, "state_dict": state,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9,
                                                         "nesterov": False, "params": [0, 1]}]}}


def fixtures_side(args):
    """Writes the CI fixtures into --fixtures (see the module docstring)."""
    import collections

    import torch

    torch.set_num_threads(args.threads)
    modules, backbone = _reference_modules(args.reference)
    out = os.path.abspath(args.fixtures)
    os.makedirs(out, exist_ok=True)
    keys = {}
    for recipe, params in REFERENCE_PARAMS.items():
        net = modules.CMP(dict(params, img_enc_dim=256, sparse_enc_dim=16, output_dim=2 * NBINS,
                               pretrained_image_encoder=False))
        keys[recipe] = {k: list(v.shape) for k, v in modules.FixModule(net).state_dict().items()}
    with open(os.path.join(out, "reference_keys.json"), "w") as f:
        json.dump(keys, f, indent=0)

    generator = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    inputs = _part_inputs(rng)
    states, arrays = {}, {}
    for name, (attribute, module, forward) in _fixture_parts(modules, backbone).items():
        forward = forward or module
        _randomize(module, args.gain, generator)
        tensors = [torch.from_numpy(x) for x in inputs[name]]
        _calibrate(module, forward, tensors)
        with torch.no_grad():
            output = forward(*tensors)
        states[name] = collections.OrderedDict(
            (f"module.{attribute}.{k}", v) for k, v in module.state_dict().items())
        for i, x in enumerate(inputs[name]):
            arrays[f"{name}/input{i}"] = x
        arrays[f"{name}/output"] = output.numpy()
    torch.save(states, os.path.join(out, "reference_parts.pth"),
               _use_new_zipfile_serialization=False)
    np.savez_compressed(os.path.join(out, "reference_parts.npz"), **arrays)

    sample = _format_samples()
    torch.save(sample, os.path.join(out, "torch_formats_legacy.pth"),
               _use_new_zipfile_serialization=False)
    torch.save(sample, os.path.join(out, "torch_formats_zip.pth"))
    np.savez(os.path.join(out, "torch_formats.npz"),
             **{k: v.detach().float().numpy() if v.dtype == torch.bfloat16 else v.detach().numpy()
                for k, v in sample["state_dict"].items()})
    for name in sorted(os.listdir(out)):
        if name.startswith(("reference_", "torch_formats")):
            print(f"{os.path.join(args.fixtures, name)}: {os.path.getsize(os.path.join(out, name))}"
                  " bytes")


# ------------------------------------------------------------------ the TensorFlow side

def _load_recipe(recipe):
    import importlib

    sys.path.insert(0, ROOT)
    return importlib.import_module(f"configs.{recipe}").get_config()


def _inputs(config, size, count):
    """`count` centre crops of the embedded validation clip with the recipe's guidance."""
    sys.path.insert(0, ROOT)
    from export import export_lib

    samples = export_lib.real_samples(config, "val", count, (size, size))
    image = np.concatenate([s["image"] for s in samples]).astype(np.float32)
    sparse = np.concatenate([s["sparse"] for s in samples]).astype(np.float32)
    return image, sparse


def _run_torch(args, side, **extra):
    command = [args.torch_python, os.path.abspath(__file__), f"--side={side}",
               f"--reference={args.reference}", f"--gain={args.gain}", f"--seed={args.seed}",
               f"--threads={args.threads}"] + [f"--{k}={v}" for k, v in extra.items()]
    subprocess.run(command, check=True)


def compare(recipe, args):
    """One recipe: reference checkpoint -> convert -> both models on the same inputs."""
    import keras

    from cmp_tf import convert
    from cmp_tf import models  # noqa: F401  (registers the custom layers)

    config = _load_recipe(recipe)
    workdir = os.path.join(args.workdir, recipe)
    os.makedirs(workdir, exist_ok=True)
    image, sparse = _inputs(config, args.size, args.samples)
    np.savez(os.path.join(workdir, "inputs.npz"), image=image, sparse=sparse)
    _run_torch(args, "reference", recipe=recipe, workdir=workdir)
    checkpoint = os.path.join(workdir, "ckpt_iter_0.pth.tar")
    start = time.perf_counter()
    report = convert.convert(checkpoint, config, os.path.join(workdir, "model.keras"))
    seconds = time.perf_counter() - start
    model = keras.models.load_model(report["out"])
    ours = model({"image": image, "sparse": sparse}, training=False)
    ref = np.load(os.path.join(workdir, "reference_outputs.npz"))
    ref_logits = ref["logits"].transpose(0, 2, 3, 1)
    ref_flow = ref["flow"].transpose(0, 2, 3, 1)
    d_logits = np.abs(ours["logits"].numpy() - ref_logits)
    d_flow = np.abs(ours["flow"].numpy() - ref_flow)
    row = dict(recipe=recipe, size=args.size, samples=len(image),
               guides_per_sample=float(sparse[..., 2].sum() / len(image)),
               checkpoint_mb=os.path.getsize(checkpoint) / 2**20, tensors=report["tensors"],
               dropped=len(report["dropped"]), convert_s=seconds,
               logits_max_abs=float(np.abs(ref_logits).max()),
               logits_rel=float(d_logits.max() / np.abs(ref_logits).max()),
               flow_mean_abs_px=float(np.abs(ref_flow).mean()),
               flow_max_px=float(d_flow.max()), flow_mean_px=float(d_flow.mean()))
    row["ok"] = row["logits_rel"] <= LOGITS_REL_BOUND and row["flow_max_px"] <= FLOW_BOUND_PX
    return row


def _table(rows):
    lines = ["| recipe | size | guides | tensors | max abs logit | max abs Δlogits / max abs "
             "logit | mean abs flow px | max abs Δflow px | mean abs Δflow px |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['recipe']} | {r['size']}² ×{r['samples']} | "
                     f"{r['guides_per_sample']:.0f} | {r['tensors']} | "
                     f"{r['logits_max_abs']:.3g} | {r['logits_rel']:.2e} | "
                     f"{r['flow_mean_abs_px']:.3g} | {r['flow_max_px']:.2e} | "
                     f"{r['flow_mean_px']:.2e} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True,
                        help="Checkout of XiaohangZhan/conditional-motion-propagation.")
    parser.add_argument("--torch_python", default="/tmp/venvs/torch/bin/python",
                        help="A Python with torch, numpy and pillow.")
    parser.add_argument("--recipes", default=",".join(REFERENCE_PARAMS))
    parser.add_argument("--size", type=int, default=384, help="Square crop side (px).")
    parser.add_argument("--samples", type=int, default=2, help="Frames compared per recipe.")
    parser.add_argument("--gain", type=float, default=1.0, help="Xavier gain of the weights.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="PyTorch threads.")
    parser.add_argument("--workdir", default="runs/benchmarks/reference_parity",
                        help="Checkpoints, converted models and outputs.")
    parser.add_argument("--out", default="runs/benchmarks/reference_parity.json")
    parser.add_argument("--fixtures", default=None,
                        help="Write the CI fixtures into this folder instead (tests/data).")
    parser.add_argument("--side", default="tensorflow", choices=["tensorflow", "reference",
                                                                 "fixtures"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--recipe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.samples < 2:  # the BatchNorm statistics are calibrated on the batch itself
        parser.error(f"--samples={args.samples}: at least 2 frames (the BatchNorm statistics "
                     "are calibrated on them).")
    if args.side == "reference":
        return reference_side(args)
    if args.side == "fixtures":
        return fixtures_side(args)
    if args.fixtures:
        return _run_torch(args, "fixtures", fixtures=os.path.abspath(args.fixtures))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    unknown = sorted(set(args.recipes.split(",")) - set(REFERENCE_PARAMS))
    if unknown:
        raise SystemExit(f"--recipes: unknown {unknown}; known: {', '.join(REFERENCE_PARAMS)}.")
    rows = [compare(recipe, args) for recipe in args.recipes.split(",")]
    text = _table(rows)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"rows": rows, "gain": args.gain, "seed": args.seed,
                   "bounds": {"logits_rel": LOGITS_REL_BOUND, "flow_max_px": FLOW_BOUND_PX},
                   "table": text}, f, indent=1)
    print(f"wrote {args.out}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
