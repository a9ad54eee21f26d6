r"""The paper's CMP scaled to a CPU: a small CMP that trains in minutes on 2 cores.

Same structure as the paper's recipes, its bins head and cross-entropy loss, scaled down:
MobileNetV3-Small encoder, a narrow skip-layer decoder, 128^2 crops, and the nearest-guidance
prior so the network starts from the fill and learns corrections (the paper's recipe needs
GPU-scale training; docs/design.md §2). At this budget the bins read-out ends worse than the
nearest fill on unseen clips (docs/ablation.md); `configs/propagation.py`, built on this
recipe, is what `python train.py` trains by default.

  python train.py --config=configs/cpu_bins.py
"""
import ml_collections

from cmp_tf import data
from configs import common


def get_config(arg=None):
    """`:runlocal` shrinks it to a few-step smoke run."""
    arg = common.parse_arg(arg, runlocal=False)
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = common.model_defaults(
        image_encoder="mobilenet_v3", sparse_encoder="shallownet32x", decoder="skip_layer",
        decoder_combo=(1, 2, 4), head="bins",
        options=dict(bins=dict(nearest_prior=True),
                     mobilenet_v3=dict(variant="small", alpha=1.0, width=128),
                     skip_layer=dict(width=64, fusion_widths=(128, 64, 32), skip_widths=(64, 16),
                                     separable=False, out_stride=2)))
    c.flow = common.flow()
    train, val = data.sample_splits()
    c.data = dict(train=train, val=val, cache_dir="data/cache", short_size=160, crop=(128, 128),
                  batch_size=8, flip=True, zoom=(1.0, 1.0), rotate_degrees=0.0,
                  flow_reverse=False, flow_scale=(1.0, 1.0), flow_rotate=False,
                  shuffle_buffer=256, on_error="skip",
                  max_bad_in_a_row=common.MAX_BAD_IN_A_ROW,
                  layered=common.layered())
    c.ingest = common.ingest(max_side=384)  # short sides >= 160 for every sample clip
    c.guidance = dict(strategies=("grid", "watershed"), bg_ratio=1 / 32**2, nms_ks=15,
                      max_num_guide=-1, num_points=(0, 0))
    c.optim = dict(name="sgd", momentum=0.9, weight_decay=1e-4)
    c.schedule = dict(lr=0.01, boundaries=(600, 850), factor=0.1, warmup_steps=100)
    # ~2 steps/s on 2 cores: about 8 minutes, plus first-use ingestion and validation.
    c.train = common.train(steps=1_000, checkpoint_every=250, image_every=250)
    if arg.runlocal:
        c.train.steps, c.data.batch_size, c.data.crop = 20, 2, (128, 128)
    return c
