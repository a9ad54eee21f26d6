r"""On-device CMP (beyond the paper): MobileNetV3-Large encoder, skip-layer decoder (output
stride 2), nearest-guidance prior. Exports to TFLite / ONNX for phones and services.

  python train.py --config=configs/mobile.py --config.data.train=...
"""
import ml_collections

from configs import common


def get_config(arg=None):
    """`:runlocal` shrinks it to a 20-step smoke run at 128² (its data named by
    --config.data.train); `:variant=small` for the small net."""
    arg = common.parse_arg(arg, runlocal=False, variant="large")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = common.model_defaults(
        image_encoder="mobilenet_v3", sparse_encoder="shallownet32x", decoder="skip_layer",
        decoder_combo=(1, 2, 4), head="bins",
        options=dict(bins=dict(nearest_prior=True),
                     mobilenet_v3=dict(variant=arg.variant, alpha=1.0)))
    c.flow = common.flow()
    c.data = dict(train=(), val=(), cache_dir="data/cache", short_size=416, crop=(384, 384),
                  batch_size=64, flip=False, zoom=(1.0, 1.0),
                  rotate_degrees=0.0, flow_reverse=False, flow_scale=(1.0, 1.0),
                  flow_rotate=False,  # no augmentation, as the reference's configs
                  shuffle_buffer=1024, on_error="skip",
                  max_bad_in_a_row=common.MAX_BAD_IN_A_ROW,
                  layered=common.layered())
    c.ingest = common.ingest(max_side=1024)  # keep short sides above data.short_size
    c.guidance = dict(strategies=("grid", "watershed"), bg_ratio=5.74e-5, nms_ks=41,
                      max_num_guide=-1, num_points=(0, 0))
    c.optim = dict(name="sgd", momentum=0.9, weight_decay=1e-4)
    c.schedule = dict(lr=0.1, boundaries=(24_000, 36_000), factor=0.1, warmup_steps=0)
    c.train = common.train(steps=42_000, checkpoint_every=5_000)
    if arg.runlocal:
        c.train.steps, c.data.batch_size, c.data.crop = 20, 2, (128, 128)
    return c
