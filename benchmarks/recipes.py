"""The names benchmarks take in --recipes, checked in one place before anything is timed: a
propagation recipe configs/<name>.py, or, for a benchmark that loads finished runs, a run
directory <runs>/<name>/ with its model.keras (so a name is a run, not only a recipe); and
the input side their models are timed at."""
import importlib
import os

from cmp_tf import rundir

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def is_recipe(name):
    """Whether configs/<name>.py is a propagation recipe: a `get_config()` giving the model and
    flow sections a CMP is built from. configs/ holds other modules too (common.py, helpers
    without a recipe; segmentation.py, the transfer's recipe, with no flow), which would fail
    only when their model is built. Recipes import cmp_tf's model registry, so this loads
    TensorFlow, as the benchmarks have already."""
    if not name.isidentifier() or not os.path.isfile(os.path.join(CONFIGS, f"{name}.py")):
        return False
    get_config = getattr(importlib.import_module(f"configs.{name}"), "get_config", None)
    if get_config is None:
        return False
    config = get_config()
    return hasattr(config, "keys") and {"model", "flow"} <= set(config.keys())


def available():
    """The propagation recipes under configs/, sorted."""
    return [name for name in sorted(f[:-3] for f in os.listdir(CONFIGS) if f.endswith(".py"))
            if not name.startswith("_") and is_recipe(name)]


def check(names, runs=None, flag="--recipes"):
    """Refuses `names` unless each is a propagation recipe under configs/ or, with `runs`, a
    finished run <runs>/<name>/model.keras: a typo or a helper module is named before the first
    model is built, not met as an import or build error after others were timed.

    Raises:
      ValueError: naming `flag`, the names that are neither, where they were looked for and
        the recipes there.
    """
    if not names:
        raise ValueError(f"{flag}: expected at least one recipe name; got none.")
    bad = [name for name in names
           if not (runs and os.path.isfile(os.path.join(runs, name, rundir.MODEL_FILE)))
           and not is_recipe(name)]
    if not bad:
        return
    missing = [name for name in bad
               if not os.path.isfile(os.path.join(CONFIGS, f"{name}.py"))]
    others = [name for name in bad if name not in missing]
    reasons = []
    if missing:
        runs_too = (f" and no run {os.path.join(runs, '<name>', rundir.MODEL_FILE)}"
                    if runs else "")
        reasons.append(f"no recipe {', '.join(missing)} under configs/{runs_too}")
    if others:
        which = "is not a propagation recipe" if len(others) == 1 \
            else "are not propagation recipes"
        reasons.append(f"{', '.join(f'configs/{name}.py' for name in others)} {which} (no "
                       "get_config() giving a config with model and flow)")
    raise ValueError(f"{flag}: {'; '.join(reasons)}. The recipes under configs/: "
                     f"{', '.join(available())}.")


def check_size(model, recipe, size, flag="--size"):
    """Refuses a square side `size` that `model`, built from `recipe`, cannot take, in one line
    naming `flag`, before anything is timed (not as TensorFlow's error from inside the traced
    forward or step)."""
    from cmp_tf import models

    models.check_sides(model, [size], flag, name=recipe)
