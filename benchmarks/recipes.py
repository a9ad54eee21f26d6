"""The names benchmarks take in --recipes, checked in one place before anything is timed: a
recipe file configs/<name>.py, or, for a benchmark that loads finished runs, a run directory
<runs>/<name>/ with its model.keras (so a name is a run, not only a recipe)."""
import os

from cmp_tf import rundir

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def check(names, runs=None, flag="--recipes"):
    """Refuses `names` unless each is a recipe under configs/ or, with `runs`, a finished run
    <runs>/<name>/model.keras: a typo is named before the first model is built, not met as an
    import error after others were timed.

    Raises:
      ValueError: naming `flag`, the names that are neither, and where they were looked for.
    """
    if not names:
        raise ValueError(f"{flag}: expected at least one recipe name; got none.")
    missing = [name for name in names
               if not os.path.isfile(os.path.join(CONFIGS, f"{name}.py"))
               and not (runs and os.path.isfile(os.path.join(runs, name, rundir.MODEL_FILE)))]
    if missing:
        runs_too = (f" and no run {os.path.join(runs, '<name>', rundir.MODEL_FILE)}"
                    if runs else "")
        raise ValueError(f"{flag}: no recipe {', '.join(missing)} under configs/{runs_too}.")
