r"""The paper's ResNet-50 recipe (rep_learning/resnet50_yfcc_voc_16gpu_42k): dilated ResNet-50,
plain decoder [1, 2, 4], 320^2 crops, global batch 160 (10 per GPU on 16 GPUs), 42k steps.

  python train.py --config=configs/resnet50_yfcc.py --config.data.train=...
"""
import ml_collections

from configs import common


def get_config(arg=None):
    """Reference recipe; `:runlocal` shrinks it to a 20-step smoke run at 128² (its data, as
    the full recipe's, named by --config.data.train)."""
    arg = common.parse_arg(arg, runlocal=False)
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = common.model_defaults(image_encoder="resnet50", sparse_encoder="shallownet8x",
                                    decoder="plain", decoder_combo=(1, 2, 4))
    c.flow = common.flow()
    c.data = dict(train=(), val=(), cache_dir="data/cache", short_size=416, crop=(320, 320),
                  batch_size=160, flip=False, zoom=(1.0, 1.0),
                  rotate_degrees=0.0, flow_reverse=False, flow_scale=(1.0, 1.0),
                  flow_rotate=False,  # no augmentation, as the reference's configs
                  shuffle_buffer=1024, on_error="skip",  # global batch: 10 per GPU on 16 GPUs
                  max_bad_in_a_row=common.MAX_BAD_IN_A_ROW,
                  layered=common.layered())
    c.ingest = common.ingest(max_side=1024)  # keep short sides above data.short_size
    c.guidance = dict(strategies=("grid", "watershed"), bg_ratio=0.00003629, nms_ks=67,
                      max_num_guide=-1, num_points=(0, 0))  # grid stride 165; -1: no cap
    c.optim = dict(name="sgd", momentum=0.9, weight_decay=1e-4)
    c.schedule = dict(lr=0.1, boundaries=(24_000, 36_000), factor=0.1, warmup_steps=0)
    c.train = common.train(steps=42_000, checkpoint_every=10_000)
    if arg.runlocal:
        c.train.steps, c.data.batch_size, c.data.crop = 20, 2, (128, 128)
    return c
