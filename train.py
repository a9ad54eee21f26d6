r"""Trains CMP from a recipe.

  python train.py [--config=configs/default.py] [--config.data.batch_size=8] [--workdir=DIR]

The training loop (tf.distribute, checkpoints, resume) is issue #5; until it lands this
builds the recipe's model, checks the config against it and prints its summary.
"""
import json
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from cmp_tf import models

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/default.py", "Recipe file under configs/.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory; default runs/<config name>.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
    config = _CONFIG.value
    model = models.build_cmp(config)  # validates the config against the model it describes
    model.summary(expand_nested=False)
    recipe = os.path.splitext(os.path.basename(flags.FLAGS["config"].value.split(":")[0]))[0]
    workdir = _WORKDIR.value or os.path.join("runs", recipe)
    print(json.dumps(config.to_dict(), indent=1, default=str))
    print(f"Model {recipe}: {model.count_params():,} parameters; run directory would be "
          f"{workdir}.\nThe training loop is not in this version yet (issue #5).")
    sys.exit(2)


if __name__ == "__main__":
    app.run(main)
