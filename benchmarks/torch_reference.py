r"""The reference PyTorch networks, rebuilt from docs/reference.md and timed on this CPU.

  python benchmarks/torch_reference.py [--recipes=alexnet_yfcc,resnet50_semiauto] [--threads=2]
      [--steps=5] [--size=384] [--out=runs/benchmarks/torch_reference.json]

docs/reference.md §7 was measured on an Intel Xeon; this script measures the same networks on the
machine our TensorFlow benchmarks (inference.py, train_throughput.py) run on, so the two can be
compared side by side. Per recipe it times, with torch.set_num_threads(--threads):
  eval_fwd_s     eval-mode forward, batch 1, --size^2, median of --repeats after 2 warm-up;
  train_step_s   forward + full-resolution discrete loss + backward + SGD step (momentum 0.9,
                 weight decay 1e-4 on every parameter), batch --batch, median of --steps after
                 2 warm-up, on one fixed random batch;
  loss_only_s    the loss alone (bilinear align_corners upsampling of the 198 logits to --size^2,
                 two cross-entropies over 99 bins), forward + backward, batch --batch.
The networks are written from docs/reference.md §1 (no code taken from the original repository);
their trainable parameter and BN running-stat counts are asserted against §2 before timing.
Needs only torch and numpy, in its own venv, e.g.
  python3.11 -m venv /tmp/venvs/torch
  /tmp/venvs/torch/bin/pip install torch numpy --index-url https://download.pytorch.org/whl/cpu
  /tmp/venvs/torch/bin/python benchmarks/torch_reference.py
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.reference import cpu_model  # noqa: E402  (plain Python: no TensorFlow needed)

NBINS, FMAX = 99, 50.0  # every CMP config: 2 * NBINS logits, flow binned in [-FMAX, FMAX]
IMG_ENC_DIM, SPARSE_ENC_DIM = 256, 16
MEAN, DIV = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)  # 0-255 RGB normalisation

# docs/reference.md §2: trainable parameters per part; BN running mean+var and
# num_batches_tracked are buffers, counted apart (state_dict = trainable + both). "params" in
# the output is trainable only.
EXPECTED = {
        "alexnet_yfcc": {"image_encoder": 31_037_760, "sparse_encoder": 4_000,
                         "decoder": 1_460_934, "trainable": 32_502_694,
                         "bn_running_stats": 20_736, "num_batches_tracked": 15,
                         "state_dict": 32_523_445},
        "resnet50_semiauto": {"image_encoder": 24_032_576, "sparse_encoder": 4_000,
                              "decoder": 4_479_846, "trainable": 28_516_422,
                              "bn_running_stats": 57_472, "num_batches_tracked": 72,
                              "state_dict": 28_573_966},
}
# docs/reference.md §3: stride of the logits relative to the input.
LOGIT_STRIDE = {"alexnet_yfcc": 32, "resnet50_semiauto": 2}
# Input sides must be multiples of these, or image and sparse features disagree in size (§3).
SIZE_MULTIPLE = {"alexnet_yfcc": 32, "resnet50_semiauto": 8}
# docs/reference.md §7 (torch 2.14.1, 2 threads, 2-core Intel Xeon, 384^2), for the side-by-side
# table.
# AlexNet's train step is §7's 7-step re-check (2.08-2.16 s), not the 5.18 s median it calls noise.
XEON_384 = {"alexnet_yfcc": {"eval_fwd_s": 0.0849, "train_step_s": 2.12, "loss_only_s": 1.33},
            "resnet50_semiauto": {"eval_fwd_s": 0.492, "train_step_s": 10.15, "loss_only_s": 1.29}}


def conv_bn_relu(cin, cout, kernel, stride=1, padding=None, dilation=1):
    """Conv (with bias, as every CMP conv outside ResNet) + BatchNorm + ReLU."""
    if padding is None:
        padding = dilation * (kernel // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding, dilation),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def upsample(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


# ---------------------------------------------------------------- image encoders (§1)

class AlexNetFCN32x(nn.Module):
    """alexnet_fcn_32x: AlexNet with BN, fc6/fc7 as convolutions, 256 features at stride 32."""

    def __init__(self, out_dim=IMG_ENC_DIM):
        super().__init__()
        self.features = nn.Sequential(
                conv_bn_relu(3, 96, 11, stride=4, padding=5),             # 1/4
                nn.MaxPool2d(3, 2, 1),                                     # 1/8
                conv_bn_relu(96, 256, 5, padding=2),
                nn.MaxPool2d(3, 2, 1),                                     # 1/16
                conv_bn_relu(256, 384, 3), conv_bn_relu(384, 384, 3), conv_bn_relu(384, 256, 3),
                nn.MaxPool2d(3, 2, 1),                                     # 1/32
                conv_bn_relu(256, 4096, 3), nn.Dropout(0.5),               # fc6
                conv_bn_relu(4096, 4096, 1), nn.Dropout(0.5),              # fc7
                nn.Conv2d(4096, out_dim, 1))                               # conv8: bias, no BN/ReLU

    def forward(self, image):
        return self.features(image)  # [B, 256, H/32, W/32]


class Bottleneck(nn.Module):
    """torchvision v1.5 bottleneck: stride and dilation on the 3x3 conv."""
    expansion = 4

    def __init__(self, cin, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class DilatedResNet50(nn.Module):
    """ResNet-50 at output stride 8: layer3/layer4 keep stride 1 and dilate EVERY block's 3x3."""

    def __init__(self, out_dim=IMG_ENC_DIM):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.cin = 64
        self.layer1 = self._layer(64, 3, stride=1, dilation=1)   # 1/4
        self.layer2 = self._layer(128, 4, stride=2, dilation=1)  # 1/8
        self.layer3 = self._layer(256, 6, stride=1, dilation=2)  # 1/8
        self.layer4 = self._layer(512, 3, stride=1, dilation=4)  # 1/8
        self.conv5 = nn.Conv2d(2048, out_dim, 1)                  # bias, no BN/ReLU

    def _layer(self, planes, blocks, stride, dilation):
        cout = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.cin != cout:
            downsample = nn.Sequential(nn.Conv2d(self.cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout))
        layers = [Bottleneck(self.cin, planes, stride, dilation, downsample)]
        self.cin = cout
        layers += [Bottleneck(cout, planes, 1, dilation) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, image):
        conv1 = self.relu(self.bn1(self.conv1(image)))  # [B, 64, H/2, W/2]  skip for fusion2
        layer1 = self.layer1(self.maxpool(conv1))        # [B, 256, H/4, W/4] skip for fusion4
        x = self.layer4(self.layer3(self.layer2(layer1)))
        return self.conv5(x), (conv1, layer1)            # [B, 256, H/8, W/8]


# ---------------------------------------------------------------- sparse encoder (§1)

class ShallowNet(nn.Module):
    """Encodes the 4-channel guidance [u*m, v*m, m, m] to 16 channels at the image stride."""

    def __init__(self, last_pool, in_dim=4, out_dim=SPARSE_ENC_DIM):
        super().__init__()
        self.net = nn.Sequential(conv_bn_relu(in_dim, out_dim, 5, stride=2, padding=2),
                                 nn.MaxPool2d(2, 2),
                                 conv_bn_relu(out_dim, out_dim, 3),
                                 nn.AvgPool2d(last_pool, last_pool))

    def forward(self, sparse):
        return self.net(sparse)


# ---------------------------------------------------------------- decoders (§1)

def _branch(pool, cin, width, convs):
    layers = [nn.MaxPool2d(pool, pool)] if pool > 1 else []
    layers += [conv_bn_relu(cin if i == 0 else width, width, 3) for i in range(convs)]
    return nn.Sequential(*layers)


class MotionDecoderPlain(nn.Module):
    """Branches at pools 1, 2, 4 widen the receptive field; logits at the feature stride."""

    def __init__(self, cin=IMG_ENC_DIM + SPARSE_ENC_DIM, out_dim=2 * NBINS, combo=(1, 2, 4)):
        super().__init__()
        self.branches = nn.ModuleList(_branch(k, cin, 128, 2) for k in combo)
        self.head = nn.Conv2d(128 * len(combo), out_dim, 1)

    def forward(self, x):
        size = x.shape[2:]
        feats = [self.branches[0](x)] + [upsample(b(x), size) for b in self.branches[1:]]
        return self.head(torch.cat(feats, 1))


class MotionDecoderSkipLayer(nn.Module):
    """Four branches (pools 1, 2, 4, 8), then ResNet skips refine the logits up to stride 2."""

    def __init__(self, cin=IMG_ENC_DIM + SPARSE_ENC_DIM, out_dim=2 * NBINS):
        super().__init__()
        self.branches = nn.ModuleList(_branch(k, cin, 128, 3) for k in (1, 2, 4, 8))
        self.fusion8 = conv_bn_relu(512, 256, 3)
        self.skipconv4 = conv_bn_relu(256, 128, 3)
        self.fusion4 = conv_bn_relu(256 + 128, 128, 3)
        self.skipconv2 = conv_bn_relu(64, 32, 3)
        self.fusion2 = conv_bn_relu(128 + 32, 64, 3)
        self.head = nn.Conv2d(64, out_dim, 1)

    def forward(self, x, skips):
        conv1, layer1 = skips
        size = x.shape[2:]
        feats = [self.branches[0](x)] + [upsample(b(x), size) for b in self.branches[1:]]
        x = self.fusion8(torch.cat(feats, 1))                                   # 1/8
        x = upsample(x, layer1.shape[2:])
        x = self.fusion4(torch.cat([x, self.skipconv4(layer1)], 1))             # 1/4
        x = upsample(x, conv1.shape[2:])
        x = self.fusion2(torch.cat([x, self.skipconv2(conv1)], 1))              # 1/2
        return self.head(x)


# ---------------------------------------------------------------- CMP (§1) and loss (§3)

class CMP(nn.Module):
    """Wiring only: decoder(cat[image features, sparse features]) -> 2 * NBINS logits."""

    def __init__(self, image_encoder, sparse_encoder, decoder, skip_layer):
        super().__init__()
        self.image_encoder, self.sparse_encoder, self.decoder = (
                image_encoder, sparse_encoder, decoder)
        self.skip_layer = skip_layer

    def forward(self, image, sparse):
        sparse_feat = self.sparse_encoder(sparse)
        if self.skip_layer:
            image_feat, skips = self.image_encoder(image)
            return self.decoder(torch.cat([image_feat, sparse_feat], 1), skips)
        return self.decoder(torch.cat([self.image_encoder(image), sparse_feat], 1))


def build(recipe):
    if recipe == "alexnet_yfcc":
        model = CMP(AlexNetFCN32x(), ShallowNet(last_pool=8), MotionDecoderPlain(), False)
    elif recipe == "resnet50_semiauto":
        model = CMP(DilatedResNet50(), ShallowNet(last_pool=2), MotionDecoderSkipLayer(), True)
    else:
        raise ValueError(f"--recipes: unknown recipe {recipe!r}; known: {sorted(EXPECTED)}.")
    init_weights(model)
    return model


def init_weights(model, gain=0.02):
    """The init the reference trains with (utils.init_weights 'xavier', gain 0.02), §1."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)


def discrete_loss(logits, flow):
    """DiscreteLoss(nbins=99, fmax=50): upsample LOGITS to the flow's size, CE on x and y bins."""
    if logits.shape[2:] != flow.shape[2:]:
        logits = upsample(logits, flow.shape[2:])
    step = 2 * FMAX / NBINS
    bins = torch.floor((flow.clamp(-FMAX + 1e-3, FMAX - 1e-3) + FMAX) / step).long()
    return (F.cross_entropy(logits[:, :NBINS], bins[:, 0])
            + F.cross_entropy(logits[:, NBINS:], bins[:, 1]))


# ---------------------------------------------------------------- measurement

def count_params(model):
    parts = {name: sum(p.numel() for p in getattr(model, name).parameters() if p.requires_grad)
             for name in ("image_encoder", "sparse_encoder", "decoder")}
    parts["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    parts["bn_running_stats"] = sum(m.running_mean.numel() + m.running_var.numel() for m in bns)
    parts["num_batches_tracked"] = sum(m.num_batches_tracked.numel() for m in bns)
    parts["state_dict"] = sum(v.numel() for v in model.state_dict().values())
    return parts


def synthetic_batch(batch, size, points=30, seed=0):
    """Normalised random image, sparse guidance [u*m, v*m, m, m] at `points` pixels, dense flow."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, size, size, generator=g) * 255
    image = (image - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(DIV).view(1, 3, 1, 1)
    flow = torch.rand(batch, 2, size, size, generator=g) * 40 - 20  # pixels, uniform [-20, 20]
    mask = torch.zeros(batch, 1, size, size)
    for b in range(batch):
        idx = torch.randperm(size * size, generator=g)[:points]
        mask[b, 0].view(-1)[idx] = 1
    # The reference trainer feeds torch.cat([sparse_flow, mask], 1) with a 2-channel mask.
    sparse = torch.cat([flow * mask, mask, mask], 1)
    return image, sparse, flow


def median_time(fn, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def benchmark(recipe, args):
    torch.manual_seed(0)
    model = build(recipe)
    counts = count_params(model)
    for key, want in EXPECTED[recipe].items():
        if counts[key] != want:
            raise AssertionError(
                    f"{recipe}: {key} = {counts[key]:,}, docs/reference.md §2 says {want:,}.")
    print(f"{recipe}: params OK " + ", ".join(f"{k}={v:,}" for k, v in counts.items()),
          flush=True)
    stride, size = LOGIT_STRIDE[recipe], args.size
    row = {"recipe": recipe, "params": counts["trainable"], "param_counts": counts, "size": size,
           "batch": args.batch, "threads": torch.get_num_threads()}

    # (i) eval forward, batch 1.
    image, sparse, _ = synthetic_batch(1, size, args.points, seed=1)
    model.eval()
    with torch.inference_mode():
        logits = model(image, sparse)
        want = (1, 2 * NBINS, size // stride, size // stride)
        if tuple(logits.shape) != want:
            raise AssertionError(f"{recipe}: logits {tuple(logits.shape)}, expected {want}.")
        row["eval_fwd_s"], row["eval_fwd_times"] = median_time(
                lambda: model(image, sparse), args.repeats)
    print(f"  eval fwd b1 {size}: {row['eval_fwd_s']:.4f} s", flush=True)

    # (ii) training step, batch --batch, one fixed batch.
    image, sparse, flow = synthetic_batch(args.batch, size, args.points, seed=2)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    losses = []

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss = discrete_loss(model(image, sparse), flow)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    row["train_step_s"], row["train_step_times"] = median_time(train_step, args.steps)
    row["train_images_per_s"] = args.batch / row["train_step_s"]
    row["losses"] = losses
    if not all(np.isfinite(losses)):
        raise AssertionError(f"{recipe}: non-finite training loss {losses}.")
    print(f"  train step b{args.batch} {size}: {row['train_step_s']:.3f} s "
          f"({row['train_images_per_s']:.2f} img/s), loss {losses[0]:.3f} -> {losses[-1]:.3f}",
          flush=True)

    # (iii) the loss alone, forward + backward, on logits at this recipe's resolution.
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(args.batch, 2 * NBINS, size // stride, size // stride, generator=g)
    logits.requires_grad_(True)

    def loss_only():
        logits.grad = None
        discrete_loss(logits, flow).backward()

    row["loss_only_s"], row["loss_only_times"] = median_time(loss_only, args.steps)
    print(f"  loss only b{args.batch} fwd+bwd: {row['loss_only_s']:.3f} s", flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default="alexnet_yfcc,resnet50_semiauto",
                        help="Comma-separated: alexnet_yfcc, resnet50_semiauto.")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads.")
    parser.add_argument("--steps", type=int, default=5,
                        help="Timed train / loss steps (median) after 2 warm-up.")
    parser.add_argument("--repeats", type=int, default=5,
                        help="Timed eval forwards (median) after 2 warm-up.")
    parser.add_argument("--size", type=int, default=384, help="Square input side in pixels.")
    parser.add_argument("--batch", type=int, default=4, help="Batch of the train and loss steps.")
    parser.add_argument("--points", type=int, default=30, help="Guidance points per sample.")
    parser.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (configs: 0.1).")
    parser.add_argument("--out", default="runs/benchmarks/torch_reference.json",
                        help="JSON output path.")
    args = parser.parse_args()
    recipes = [r for r in args.recipes.split(",") if r]
    for recipe in recipes:
        if recipe not in EXPECTED:
            parser.error(f"--recipes: unknown recipe {recipe!r}; known: {sorted(EXPECTED)}.")
        if args.size % SIZE_MULTIPLE[recipe]:
            parser.error(f"--size={args.size} must be a multiple of {SIZE_MULTIPLE[recipe]} for "
                         f"{recipe}, or its image and sparse features disagree "
                         "(docs/reference.md §3).")

    torch.set_num_threads(args.threads)
    meta = {"torch_version": torch.__version__, "numpy_version": np.__version__,
            "cpu": cpu_model(), "threads": torch.get_num_threads(), "size": args.size,
            "batch": args.batch, "steps": args.steps, "repeats": args.repeats, "lr": args.lr}
    print(f"torch {meta['torch_version']}, {meta['threads']} threads, {meta['cpu']}", flush=True)
    rows = [benchmark(recipe, args) for recipe in recipes]

    print(f"\n{'recipe':<19}{'params':>12}{'eval fwd s':>12}{'train step s':>14}{'img/s':>8}"
          f"{'loss only s':>13}   Xeon §7 (384): fwd / step / loss s")
    for r in rows:
        xeon = XEON_384[r["recipe"]] if args.size == 384 else None
        ref = (f"{xeon['eval_fwd_s']} / {xeon['train_step_s']} / {xeon['loss_only_s']}"
               if xeon else "- (size != 384)")
        print(f"{r['recipe']:<19}{r['params']:>12,}{r['eval_fwd_s']:>12.4f}"
              f"{r['train_step_s']:>14.3f}{r['train_images_per_s']:>8.2f}"
              f"{r['loss_only_s']:>13.3f}   {ref}")

    out_dir = os.path.dirname(args.out)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(dict(meta, xeon_reference_384=XEON_384,
                       recipes={r["recipe"]: dict(r, threads=meta["threads"],
                                                  torch_version=meta["torch_version"],
                                                  cpu=meta["cpu"]) for r in rows}),
                  f, indent=1)
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
