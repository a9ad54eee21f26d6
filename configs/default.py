r"""What `python train.py` trains with no flags: the best recipe for a CPU, the one the shipped
model was made by (`configs/propagation.py`). About 3-4 minutes on 2 cores, plus first-use
ingestion of the embedded clips; at the end it prints its validation EPE next to the nearest
fill's. The paper's structure scaled to a CPU, with its bins head, is `configs/cpu_bins.py`.

  python train.py
  python train.py --config=configs/default.py:runlocal   # a 20-step smoke run
"""
from configs.propagation import get_config  # noqa: F401  (the recipe, under its default name)
