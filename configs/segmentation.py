r"""Transfer to semantic segmentation: a CMP recipe's image encoder + a segmentation head,
trained from random initialization and from a CMP checkpoint at the same budget (paper, Table 1).

The default is a CPU check of a few minutes on 2 cores: the default recipe's encoder
(MobileNetV3-Small) with a small DeepLab-style head on a generated VOC-format set
(cmp_tf.data.synthetic; written into data/cache/synthetic_voc on first use). Pretrain CMP on
the same generated world's videos first:

  python -m cmp_tf.data.synthetic --out=data/cache/synthetic_voc
  python train.py --config.data.train="('data/cache/synthetic_voc/videos',)" \
      --workdir=runs/cmp_synthetic

Then compare (cmp_tf.transfer.compare_initializations). On PASCAL VOC 2012 with a paper encoder:
`--config=configs/segmentation.py:recipe=resnet50_yfcc,voc=/data/VOCdevkit/VOC2012`.

What the synthetic check shows: the whole transfer path works (VOC-format reading with the
ignore label, encoder weights moved by layer name, the same head, seed, data order and
budget for both sides, mIoU from one confusion matrix), and whether motion learned from
the videos changes what the encoder brings. What it does not show: the paper's result. The
classes are shapes with texture families, far easier than VOC (a random encoder reaches
~60% mIoU in 400 steps), CMP is pretrained for minutes, not 13M samples, and 64 val images
are noisy: compare over seeds (`evaluate.py --task=segmentation --seeds=0,1,2
--encoder_modes=fine_tuned,frozen`). Measured that way (2 CPU cores; CMP = the two commands
above, the shipped recipe, 1000 steps; docs/results.md): fine-tuned, random 62.9 +- 0.5 /
CMP 63.9 +- 1.0 mIoU (better at every seed, by 0.4-1.7); encoder frozen, 52.2 +- 1.3 /
48.9 +- 3.0 (worse at every seed). At this budget the CMP encoder is a slightly better start
to fine-tune than a random one, and worse as frozen features.
"""
import importlib
import os

import ml_collections

from configs import common


def get_config(arg=None):
    """Args (`:key=value,...`): recipe (the CMP recipe whose encoder is transferred; default
    "default"), voc (a VOC 2012 folder: the paper-scale setting), runlocal (a seconds-long
    smoke run)."""
    arg = common.parse_arg(arg, recipe="default", voc="", runlocal=False)
    folder = os.path.dirname(os.path.abspath(__file__))
    known = sorted(name[:-3] for name in os.listdir(folder) if name.endswith(".py")
                   and name[:-3] not in ("__init__", "common", "segmentation"))
    if arg.recipe not in known:
        raise ValueError(f"recipe={arg.recipe!r}: no such CMP recipe in {folder}; known: "
                         f"{', '.join(known)}.")
    recipe = importlib.import_module(f"configs.{arg.recipe}").get_config()
    c = ml_collections.ConfigDict()
    c.seed = 0
    # The encoder exactly as the CMP recipe builds it, so its checkpoints load by layer name.
    c.model = dict(image_encoder=recipe.model.image_encoder, init_gain=recipe.model.init_gain,
                   options=recipe.model.options.to_dict())
    # name: "auto" (FCN for AlexNet, ASPP otherwise), "fcn" or "aspp". rates_px: ASPP's atrous
    # rates in input pixels (DeepLabv3's 6, 12, 18 at stride 16), divided by the encoder's
    # stride. skip_width: DeepLabv3+'s stride-4 skip channels (0: none). Heads start from
    # Xavier-normal with gain init_gain (the CMP recipes' 0.02 is for their own parts).
    c.head = dict(name="auto", width=256, rates_px=(96, 192, 288), skip_width=48, dropout=0.1,
                  init_gain=1.0)
    c.transfer = dict(freeze_encoder=False)  # True: train the head only (a linear-probe-like check)
    # crop / scale / flip: training augmentation (random scale, crop, mirror); validation
    # images are padded (label 255) to the largest one. max_*_images: -1 uses all.
    c.data = dict(dir="data/cache/synthetic_voc", synthetic=True, num_classes=4,
                  train_split="train", val_split="val", crop=(128, 128), scale=(0.75, 1.25),
                  flip=True, batch_size=8, eval_batch_size=8, shuffle_buffer=256,
                  max_train_images=-1, max_val_images=-1)
    c.optim = dict(name="adam", momentum=0.9, weight_decay=1e-4)
    c.schedule = dict(lr=1e-3, boundaries=(300,), factor=0.1, warmup_steps=0)
    # checkpoint_every: steps between saves of each side's training when a comparison has a
    # folder (evaluate.py's --out): a killed comparison resumes from the last.
    c.train = dict(steps=400, log_every=20, checkpoint_every=100)
    # Synthetic scenes are small and simple: a narrow head at 128^2 keeps each run ~1-2 minutes.
    c.head.width, c.head.skip_width, c.head.rates_px = 64, 24, (32, 64, 96)
    if arg.voc:  # PASCAL VOC 2012 (21 classes), DeepLab-like schedule
        c.data.update(dir=arg.voc, synthetic=False, num_classes=21, crop=(320, 320),
                      scale=(0.5, 2.0), batch_size=16, eval_batch_size=4, shuffle_buffer=1024)
        c.head.width, c.head.skip_width, c.head.rates_px = 256, 48, (96, 192, 288)
        c.optim = dict(name="sgd", momentum=0.9, weight_decay=1e-4)
        c.schedule = dict(lr=0.01, boundaries=(20_000, 27_000), factor=0.1, warmup_steps=0)
        c.train = dict(steps=30_000, log_every=50, checkpoint_every=1000)
    if arg.runlocal:
        c.train.steps, c.train.log_every = 5, 1
        c.data.update(batch_size=2, eval_batch_size=2, crop=(64, 64), max_train_images=8,
                      max_val_images=4)
    return c
