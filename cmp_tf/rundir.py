"""Run directories: what `train.py` writes, and how every command finds a model and its recipe.

A run directory (`--workdir`, default `runs/<recipe name>`) holds `config.json` (the recipe),
`log.txt`, `checkpoints/`, `tb/` (TensorBoard), `model.keras` (the whole model),
`encoder.keras` (the image encoder alone), `eval/` and `export/`. The model that ships with the
package is a run directory too (`PRETRAINED`). Every command that takes `--checkpoint` accepts
a run directory or a model file and resolves it here; results about the shipped model go under
`runs/pretrained/`, never into the installed package. No TensorFlow is imported here.
"""
import contextlib
import errno
import fcntl
import fnmatch
import glob
import json
import os
import re
import shutil
import socket

CONFIG_FILE = "config.json"  # written first: a folder holding a run's one is a run directory
MODEL_FILE = "model.keras"
ENCODER_FILE = "encoder.keras"
SUMMARY_FILE = "summary.json"  # written last: the run has finished
PARTIAL = ".partial"  # in the hidden name of a file being written whole (`whole_file`)
RUN_LOCK = ".run.lock"  # held by the process training the folder (lock_run)
INPUT_FILE = "input.json"  # what the run's sample sequence is drawn from (note_input)
# Fields a resumed run may change: when it stops and how it logs, never what it learns (the
# learning-rate boundaries are absolute steps, so more steps continue the same schedule).
RESUMABLE_FIELDS = ("config.train.steps", "config.train.log_every", "config.train.image_every",
                    "config.train.checkpoint_every", "config.train.keep_checkpoints")
# What a run and the commands run on it write into a run directory, non-chief workers' folders
# included. --overwrite deletes these and nothing else (the lock it holds stays).
RUN_ENTRIES = (CONFIG_FILE, "log.txt", "checkpoints", "checkpoints_worker*", "tb", "tb_tmp",
               MODEL_FILE, ENCODER_FILE, "eval", "export", SUMMARY_FILE, f".*{PARTIAL}*",
               RUN_LOCK, INPUT_FILE)
# The run folders this process holds: {real path: the open, locked RUN_LOCK file}.
_HELD_RUNS = {}
# The folder holding the cmp_tf package (the repository, or site-packages): never a run.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAVED_MODEL_FILE = "saved_model.pb"  # marks a SavedModel folder
EXPORT_DIR, EXPORT_REPORT = "export", "export.json"  # python -m export's folder, its report
DEFAULT_ROOT = "runs"  # where train.py puts runs and commands look for the newest one
MODEL_SUFFIXES = {".keras": "keras", ".tflite": "tflite", ".onnx": "onnx"}
TORCH_SUFFIXES = (".pth", ".pt", ".pth.tar", ".ckpt")  # PyTorch's: cmp_tf.convert reads them
CHECKPOINTS_DIR = "checkpoints"  # a run's training checkpoints, <name>-<step>.index and data
# The CPU-trained propagation model that ships with the package; `Propagator()` with no path
# loads it. pretrained/README.md says how it was made.
PRETRAINED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained", "default")
PRETRAINED_RESULTS = os.path.join(DEFAULT_ROOT, "pretrained")  # its eval/ and export/


def newest_run(root=DEFAULT_ROOT):
    """The most recently finished run directory under `root`."""
    runs = sorted(glob.glob(os.path.join(root, "*", MODEL_FILE)), key=os.path.getmtime)
    if not runs:
        raise ValueError(f"No run under {root}/ has a {MODEL_FILE} yet: run "
                         "`python train.py` or pass --checkpoint.")
    return os.path.dirname(runs[-1])


def is_pretrained(path):
    """Whether `path` is the shipped model's folder or a file in it."""
    path = os.path.realpath(path)
    home = os.path.realpath(PRETRAINED)
    return path == home or os.path.dirname(path) == home


def default_checkpoint(root=DEFAULT_ROOT):
    """The newest run under `root`, else the shipped model: what a command's --checkpoint
    means when none is given."""
    try:
        return newest_run(root)
    except ValueError:
        if os.path.isfile(os.path.join(PRETRAINED, MODEL_FILE)):
            return PRETRAINED
        raise


_CHECKPOINT_FILE = re.compile(r"\.(index|data-[0-9]+-of-[0-9]+)$")  # a prefix's files' endings


def is_checkpoint(path):
    """Whether `path` is a training checkpoint's prefix (`run/checkpoints/ckpt-500`)."""
    return os.path.isfile(f"{os.fspath(path)}.index")


def checkpoints_in(folder):
    """{step: prefix} of the training checkpoints in `folder` (`<name>-<step>.index`), from
    the file names: no TensorFlow."""
    steps = {}
    for name in os.listdir(folder) if os.path.isdir(folder) else ():
        match = re.fullmatch(r"(.+-([0-9]+))\.index", name)
        if match:
            steps[int(match.group(2))] = os.path.join(folder, match.group(1))
    return steps


def latest_checkpoint(run):
    """The newest training checkpoint of the run directory `run` (the highest step, as
    train.py numbers them), None if it has none. Read from the file names: no TensorFlow."""
    steps = checkpoints_in(os.path.join(os.fspath(run), CHECKPOINTS_DIR))
    return steps[max(steps)] if steps else None


def names_checkpoint(path):
    """Whether `path` names one training checkpoint (its prefix or one of its files), not a
    run or its checkpoints/ folder, where the newest is chosen."""
    return is_checkpoint(_CHECKPOINT_FILE.sub("", os.fspath(path)))


def _as_checkpoint(path):
    """`path` as a checkpoint prefix where it names one by another of its forms (one of its
    files, `ckpt-2.index` or `ckpt-2.data-00000-of-00001`, or a run's checkpoints/ folder:
    its newest); else `path` unchanged."""
    prefix = _CHECKPOINT_FILE.sub("", path)
    if prefix != path and is_checkpoint(prefix):
        return prefix
    if os.path.isdir(path) and os.path.basename(os.path.normpath(path)) == CHECKPOINTS_DIR:
        return latest_checkpoint(os.path.dirname(os.path.normpath(path))) or path
    return path


def checkpoint_step(path):
    """The training step a checkpoint prefix holds (its number; None if it has none)."""
    number = re.search(r"-([0-9]+)$", os.fspath(path))
    return int(number.group(1)) if number else None


def run_folder(path):
    """The folder of the run that `path` (a run directory, a file in one, a checkpoint prefix
    in its checkpoints/, or a file `python -m export` wrote from one) belongs to."""
    if is_checkpoint(path):
        return os.path.dirname(os.path.dirname(os.path.abspath(path)))
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    if os.path.isfile(os.path.join(folder, CONFIG_FILE)):
        return folder
    return _exported_from(folder) or folder


def _exported_from(folder):
    """The run folder (or the shipped model's) that an export folder's files came from: its
    export.json names the source; else an `export/` folder inside a run; None otherwise."""
    for candidate in (folder, os.path.dirname(os.path.abspath(folder))):  # a SavedModel's too
        try:
            with open(os.path.join(candidate, EXPORT_REPORT), encoding="utf-8") as f:
                source = json.load(f).get("checkpoint")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(source, str) and source:
            run = source if os.path.isdir(source) else os.path.dirname(source)
            if os.path.isfile(os.path.join(run, CONFIG_FILE)):
                return run
    parent = os.path.dirname(os.path.abspath(folder))
    if os.path.basename(os.path.abspath(folder)) == EXPORT_DIR and \
            os.path.isfile(os.path.join(parent, CONFIG_FILE)):
        return parent  # moved with its run: the recorded source no longer there
    return None


def resolve_model_path(path, checkpoints=False):
    """A run directory, .keras, .tflite or .onnx file or SavedModel folder -> what to load
    (None: the shipped model); ValueError naming `path` otherwise. With `checkpoints`, a run
    that has not finished (no model.keras yet) gives its newest training checkpoint, and a
    checkpoint prefix itself: what evaluation and the apps can read mid-training."""
    if path is None:
        if not os.path.isfile(os.path.join(PRETRAINED, MODEL_FILE)):
            raise ValueError(f"path=None asks for the pretrained model that ships with cmp_tf, "
                             f"but {PRETRAINED} has no {MODEL_FILE} (a partial install?): pass "
                             "a run directory, a .keras, .tflite or .onnx file, or a SavedModel.")
        path = PRETRAINED
    if not isinstance(path, (str, os.PathLike)) or not str(os.fspath(path)).strip():
        raise ValueError(f"path must name a model (a run directory, a .keras, .tflite or .onnx "
                         f"file or a SavedModel folder), or be None for the shipped one; got "
                         f"{str(path)[:60]!r}.")
    path = _as_checkpoint(os.fspath(path)) if checkpoints else os.fspath(path)
    unfinished = (f"is a run that has not finished ({MODEL_FILE} is written at its end): "
                  "evaluate.py and the apps read its training checkpoints; export needs "
                  f"{MODEL_FILE}")
    if os.path.isdir(path):
        candidate = os.path.join(path, MODEL_FILE)
        if os.path.isfile(candidate):
            return candidate
        if os.path.isfile(os.path.join(path, SAVED_MODEL_FILE)):
            return path
        newest = latest_checkpoint(path)
        if newest is not None and checkpoints:
            return newest
        if newest is not None:
            raise ValueError(f"{path} {unfinished}.")
        raise ValueError(f"{path} is a directory without {MODEL_FILE} or {SAVED_MODEL_FILE}: "
                         "neither a finished run directory (train.py writes model.keras at the "
                         "end) nor a SavedModel (python -m export writes one).")
    if is_checkpoint(path):
        if not checkpoints:
            raise ValueError(f"{path} is a training checkpoint of a run; export needs the "
                             f"{MODEL_FILE} train.py writes at the end.")
        return path
    steps = checkpoints_in(os.path.dirname(path))
    if not os.path.isfile(path) and steps:
        raise ValueError(f"{path} does not exist; its folder holds the training checkpoints of "
                         f"steps {', '.join(map(str, sorted(steps)))}.")
    if not os.path.isfile(path):
        raise ValueError(f"{path} does not exist: expected a run directory, a .keras, .tflite "
                         "or .onnx file, or a SavedModel folder.")
    if os.path.splitext(path)[1] not in MODEL_SUFFIXES:
        raise ValueError(f"{path}: expected a .keras, .tflite or .onnx file, a SavedModel "
                         f"folder or a run directory.{_convert_hint(path)}")
    return path


def _convert_hint(path):
    """For a PyTorch checkpoint of the reference code given where a cmp_tf model is read."""
    if not path.lower().endswith(TORCH_SUFFIXES):
        return ""
    return (" It looks like a PyTorch checkpoint: convert it first, with python -m "
            f"cmp_tf.convert --checkpoint={path} --config=configs/<the recipe it was trained "
            "with>.py (add --encoder_only for an encoder).")


def model_format(path):
    """'keras', 'savedmodel', 'tflite', 'onnx' or 'checkpoint' for a path from
    resolve_model_path."""
    if is_checkpoint(path):
        return "checkpoint"
    return "savedmodel" if os.path.isdir(path) else MODEL_SUFFIXES[os.path.splitext(path)[1]]


def encoder_file(checkpoint):
    """A run directory (its encoder.keras, else model.keras) or a .keras file -> file path:
    what transfer learning loads."""
    path = os.fspath(checkpoint) if checkpoint is not None else ""
    if not path:
        raise ValueError("checkpoint is empty: name a run directory, a model.keras or an "
                         "encoder.keras.")
    unfinished = ("a finished run's encoder.keras is what transfer learning reads (the "
                  "propagation task also reads a run's training checkpoints)")
    if os.path.isdir(path):
        for name in (ENCODER_FILE, MODEL_FILE):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        if latest_checkpoint(path) is not None:
            raise ValueError(f"Checkpoint {path} is a run that has not finished: {unfinished}.")
        raise ValueError(f"Checkpoint {path} is a directory without {ENCODER_FILE} or "
                         f"{MODEL_FILE} (a finished training run writes both).")
    if is_checkpoint(path):
        raise ValueError(f"Checkpoint {path} is a training checkpoint: {unfinished}.")
    if not os.path.exists(path):
        raise ValueError(f"Checkpoint {path} does not exist.")
    if not path.endswith(".keras"):
        raise ValueError(f"Checkpoint {path} is neither a run directory nor a .keras file."
                         f"{_convert_hint(path)}")
    return path


def results_dir(checkpoint, kind):
    """Where results of `kind` ("eval", "export") about `checkpoint` go: <run>/<kind> for a run
    directory or a file in one, runs/pretrained/<kind> for the shipped model, and
    runs/<kind>/<file stem> for a model file outside any run; <run>/<kind>/<name>-<step> for a
    training checkpoint, apart from the finished run's; <run>/<kind>/<file name> for an
    exported file (.tflite, .onnx, a SavedModel), each apart from the others."""
    path = os.path.abspath(os.fspath(checkpoint))
    if is_pretrained(path):
        return os.path.join(PRETRAINED_RESULTS, kind)
    if is_checkpoint(path):
        return os.path.join(run_folder(path), kind, os.path.basename(path))
    folder = run_folder(path)
    exported = os.path.splitext(path)[1] in (".tflite", ".onnx") or (
        os.path.isfile(os.path.join(path, SAVED_MODEL_FILE)))
    if exported:  # each file its own results, apart from its run's model.keras
        name = os.path.basename(path)
        if is_pretrained(folder):
            return os.path.join(PRETRAINED_RESULTS, kind, name)
        if os.path.isfile(os.path.join(folder, CONFIG_FILE)):
            return os.path.join(folder, kind, name)
        return os.path.join(DEFAULT_ROOT, kind, name)
    if os.path.isfile(os.path.join(folder, CONFIG_FILE)) or os.path.isdir(path):
        return os.path.join(folder, kind)
    return os.path.join(DEFAULT_ROOT, kind, os.path.splitext(os.path.basename(path))[0])


def read_config(path):
    """(recipe, True) that the run holding `path` (a run directory or a file in one) was
    trained with, else (the shipped model's recipe, False): its data settings are what
    evaluation and export calibration fall back to. Recipes in the layout of earlier versions
    are upgraded (`upgrade_config`)."""
    import ml_collections

    saved = os.path.join(run_folder(path), CONFIG_FILE)
    found = os.path.isfile(saved)
    if not found:
        saved = os.path.join(PRETRAINED, CONFIG_FILE)
    try:
        with open(saved) as f:
            fields = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"{saved} could not be read as a recipe: {error}") from error
    return ml_collections.ConfigDict(relocate_samples(upgrade_config(fields, saved))), found


def relocate_samples(fields):
    """A recipe (plain dict) whose data sources naming a sample clip of another cmp_tf
    checkout or installation (absolute paths, as a run saves them) that is not there name this
    package's copy: a run, the shipped model's included, keeps its data where it is moved."""
    from cmp_tf import data

    samples = os.path.join("cmp_tf", "data", "samples")
    for split in ("train", "val"):
        paths = fields.get("data", {}).get(split)
        if not isinstance(paths, list):
            continue
        for index, path in enumerate(paths):
            here = os.path.join(data.SAMPLES_DIR, os.path.basename(str(path)))
            if (isinstance(path, str) and not os.path.exists(path)
                    and os.path.dirname(os.path.normpath(path)).endswith(samples)
                    and os.path.isfile(here)):
                paths[index] = here
    return fields


# Model fields of earlier versions whose only remaining value is this one.
_REMOVED_MODEL_FIELDS = {"prior_skips": False, "honour_guidance": False,
                         "learn_blend_weight": True}
_REMOVED_FLOW_FIELDS = {"targets": "one_hot", "readout_weight": 0.0}
_RECOVER = "use cmp_tf at commit 83284d6 for this run, or retrain it"


def upgrade_config(fields, source="config.json"):
    """A recipe (plain dict) in the current layout. Earlier versions configured the guidance
    prior with flags on `model` (dense_prior, prior_fill, fill_gain, gain_profile, pull_push,
    ...); they map onto a propagation head (`model.head` and its options). Options that were
    removed raise a ValueError naming the field and `source`."""
    fields = json.loads(json.dumps(fields))  # a deep copy
    model, flow = fields.get("model", {}), fields.get("flow", {})
    if "dense_prior" not in model or "head" in model:
        return fields
    for section, removed in (("model", _REMOVED_MODEL_FIELDS), ("flow", _REMOVED_FLOW_FIELDS)):
        part = fields.get(section, {})
        for field, kept in removed.items():
            if part.pop(field, kept) != kept:
                raise ValueError(f"{source}: {section}.{field} is an option cmp_tf removed; "
                                 f"{_RECOVER}.")
    if fields.get("data", {}).get("layered", {}).pop("still_background", 0.0):
        raise ValueError(f"{source}: data.layered.still_background is an option cmp_tf "
                         f"removed; {_RECOVER}.")
    dense_prior = model.pop("dense_prior")
    sigma = model.pop("prior_sigma", 2.0)
    prior_fill = model.pop("prior_fill", "nearest")
    gain = model.pop("fill_gain", False)
    profile = model.pop("gain_profile", "exponential")
    pull_push = model.pop("pull_push", None) or {}
    options = model.setdefault("options", {})
    if prior_fill == "blend":
        if gain and profile != "gaussian":
            raise ValueError(f"{source}: model.gain_profile={profile!r} is an option cmp_tf "
                             f"removed; {_RECOVER}.")
        model["head"] = "fill_correction"
        options["fill_correction"] = dict(gain=gain, pull=pull_push.get("pull", "box"),
                                          relax=pull_push.get("relax", 0))
    elif prior_fill != "nearest":
        raise ValueError(f"{source}: model.prior_fill={prior_fill!r} is an option cmp_tf "
                         f"removed; {_RECOVER}.")
    elif flow.get("loss", "discrete") == "discrete":
        model["head"] = "bins"
        options["bins"] = dict(nearest_prior=dense_prior, prior_sigma=sigma)
    else:
        model["head"] = "regression"
        options["regression"] = dict(nearest_prior=dense_prior)
    return fields


# --- Writing a run directory (train.py) ------------------------------------------------------

def _contains(folder, path):
    """Whether `path` is `folder` or lies inside it (both real paths)."""
    return os.path.commonpath([folder, path]) == folder


def check_folder_path(path, field, value=None):
    """Refuses `path` as a folder to write into where it, or a folder above it, is a file (a
    ValueError naming `field`, the flag, and `value`, its value: `path` by default), before
    anything is made there."""
    value = path if value is None else value
    here = os.path.abspath(path)
    while not os.path.lexists(here):
        parent = os.path.dirname(here)
        if parent == here:
            return
        here = parent
    if not os.path.isdir(here):
        which = "is a file" if here == os.path.abspath(value) else f"lies in {here}, a file"
        raise ValueError(f"{field}={value} {which}, not a folder.")
    if not os.access(here, os.W_OK | os.X_OK):
        which = "" if here == os.path.abspath(value) else f": {here} is"
        raise ValueError(f"{field}={value}{which} not writable by this user.")


def check_file_path(path, field):
    """Refuses `path` as a file to write where it is a folder, or its folder is a file or lies
    in one (a ValueError naming `field`): checked before the work whose result it holds."""
    if os.path.isdir(path):
        raise ValueError(f"{field}={path} is a folder; name a file.")
    check_folder_path(os.path.dirname(os.path.abspath(path)), field, value=path)


def _check_workdir_place(workdir, overwrite):
    """Refuses a workdir that is a file or lies in one, or is (or holds) the file system root,
    the home folder or the folder of the cmp_tf package, and with `overwrite` the current
    folder: none is a run."""
    check_folder_path(workdir, "--workdir")
    real = os.path.realpath(workdir)
    protected = {"the home folder": os.path.expanduser("~"),
                 "the folder of the cmp_tf package": _PACKAGE_ROOT}
    if overwrite:
        protected["the current folder"] = os.getcwd()
    for what, path in protected.items():
        if _contains(real, os.path.realpath(path)):
            raise ValueError(f"--workdir={workdir} is or holds {what} ({path}): a run needs a "
                             "folder of its own, e.g. --workdir=runs/<name>.")


def is_run_entry(name):
    """Whether a top-level name in a run directory is one a run writes (RUN_ENTRIES)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in RUN_ENTRIES)


def _run_config(path):
    """The run config saved at `path` (a dict), or None where there is none that reads as one."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and {"train", "data", "model"} <= set(saved) \
        else None


def clear_run(workdir):
    """Deletes what a run wrote into `workdir` (RUN_ENTRIES), after checking that it is a run
    directory holding nothing else; ValueError naming the files that would be lost if not.

    Links are removed, never followed."""
    if not os.path.isdir(workdir):
        if os.path.lexists(workdir):
            raise ValueError(f"--workdir={workdir} is a file, not a run directory.")
        return []
    names = sorted(n for n in os.listdir(workdir) if n != RUN_LOCK)  # ours, held: kept
    if not names:
        return []
    if _run_config(os.path.join(workdir, CONFIG_FILE)) is None:
        raise ValueError(f"--overwrite replaces only a run directory (one train.py wrote, with "
                         f"its {CONFIG_FILE}); {workdir} holds no run's {CONFIG_FILE} but "
                         f"{_listing(names)}. Choose another --workdir.")
    foreign = [name for name in names if not is_run_entry(name)]
    if foreign:
        raise ValueError(f"--overwrite would delete {workdir}, which also holds "
                         f"{_listing(foreign)}: files no run writes, which would be lost. Move "
                         "them out or choose another --workdir.")
    for name in names:
        remove(os.path.join(workdir, name))
    return names


def remove(path):
    """Deletes a file or a folder with what it holds; a link is removed, never followed."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def _listing(names, limit=8):
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def prepare_workdir(workdir, config, overwrite=False):
    """Makes `workdir` ready for `config`: new, resumed with the same config (up to
    RESUMABLE_FIELDS; a finished run with more `train.steps` trains on), or (`overwrite`)
    replaced. Refuses a finished run without `overwrite` or more steps, a resume with another
    config, and any folder that is not a run directory of its own (see clear_run,
    _check_workdir_place). Returns the config's changes from the run's, as "field: old -> new".
    Call it only once the config is known to be valid: it may delete the previous run.
    The folder is held (`lock_run`) from here until `release_run`; a refused start holds
    nothing."""
    held = os.path.realpath(workdir) in _HELD_RUNS
    try:
        return _prepare_workdir(workdir, config, overwrite)
    except BaseException:
        if not held:
            release_run(workdir)
        raise


def _prepare_workdir(workdir, config, overwrite):
    _check_workdir_place(workdir, overwrite)
    if _run_config(os.path.join(workdir, CONFIG_FILE)) is not None:
        lock_run(workdir)  # a run's folder, held before anything in it changes; others later
    finished = os.path.exists(os.path.join(workdir, SUMMARY_FILE))
    saved = os.path.join(workdir, CONFIG_FILE)
    current = json.loads(config.to_json_best_effort())
    before = None if overwrite else _run_config(saved)
    changed = config_changes(before, current) if before is not None else []
    fixed = [c for c in changed if not c.startswith(tuple(f"{f}:" for f in RESUMABLE_FIELDS))]
    longer = before is not None and current["train"]["steps"] > before["train"]["steps"]
    if finished and not overwrite and (fixed or not longer):
        raise ValueError(f"{workdir} holds a finished run ({SUMMARY_FILE}); pass --overwrite, "
                         "choose another --workdir, or raise --config.train.steps to train it "
                         f"on{f' with no other change ({fixed})' if fixed else ''}.")
    if overwrite:
        clear_run(workdir)
    elif fixed:
        raise ValueError(f"{workdir} holds an unfinished run with another config ({fixed}); "
                         "resume with the same flags, or pass --overwrite. Only "
                         f"{', '.join(RESUMABLE_FIELDS)} may change on a resume.")
    elif before is not None:
        if finished:  # trained on: its end is the last checkpoint, which the new end replaces
            for name in (SUMMARY_FILE, MODEL_FILE, ENCODER_FILE):
                if os.path.lexists(os.path.join(workdir, name)):
                    remove(os.path.join(workdir, name))
    elif os.path.lexists(saved):
        raise ValueError(f"{saved} is not a run's config (not JSON of one): a run whose "
                         "config is lost cannot be resumed or told from other files; move the "
                         "folder away or choose another --workdir.")
    elif os.path.isdir(workdir):
        foreign = [name for name in sorted(os.listdir(workdir)) if not is_run_entry(name)]
        if foreign:  # a run's files mixed into them could not be told apart or replaced
            raise ValueError(f"--workdir={workdir} holds {_listing(foreign)}, files no run "
                             "writes: a run needs a folder of its own (a new or empty one).")
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    lock_run(workdir)
    _remove_leftovers(workdir)
    from cmp_tf.data import shards

    shards.write_json(saved, current)  # a kill mid-write left a run that could not resume
    return changed


def note_input(workdir, shards, entries, workers):
    """Records what the run's training samples are drawn from (its shards by name and size,
    its list entries, its workers), and returns how that differs from the record of the run
    it resumes, one line each: the config can be the same while a data folder gained videos
    or the job another worker, and the resumed sample sequence is then not the one an
    uninterrupted run would have seen."""
    now = dict(shards=sorted([os.path.basename(p), os.path.getsize(p)] for p in shards),
               list_entries=len(entries), workers=int(workers))
    path = os.path.join(workdir, INPUT_FILE)
    try:
        with open(path) as f:
            before = json.load(f)
    except (OSError, ValueError):
        before = None
    changes = []
    if isinstance(before, dict):
        was = {tuple(s) for s in before.get("shards", [])}
        new = {tuple(s) for s in now["shards"]}
        if was != new:
            changes.append(f"{len(was)} training shards then, {len(new)} now "
                           f"({len(new - was)} new or changed, {len(was - new)} gone)")
        for field in ("list_entries", "workers"):
            if before.get(field) != now[field]:
                changes.append(f"{field.replace('_', ' ')}: {before.get(field)} then, "
                               f"{now[field]} now")
    from cmp_tf.data import shards as shards_lib

    shards_lib.write_json(path, now)
    return changes


def lock_run(workdir):
    """Holds `workdir` for this process's run until it ends: an exclusive lock on its
    RUN_LOCK file. A second train.py on a folder being trained is refused, naming the first:
    both trained, saved into one checkpoints/ and each wrote model.keras and summary.json, a
    folder mixing two runs. Held again by the same process, it is the same lock."""
    key = os.path.realpath(workdir)
    if key in _HELD_RUNS:
        return
    handle = open(os.path.join(workdir, RUN_LOCK), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno not in (errno.EAGAIN, errno.EACCES):  # a file system without locks
            handle.close()
            return
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ValueError(f"{workdir} is being trained by {holder}: wait for it to end, or "
                         "choose another --workdir.") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    _HELD_RUNS[key] = handle


def release_run(workdir):
    """Ends `lock_run`'s hold on `workdir` (a run that finished); the process's end does too."""
    handle = _HELD_RUNS.pop(os.path.realpath(workdir), None)
    if handle is not None:
        handle.close()


def _remove_leftovers(workdir):
    """Removes what writes cut short in earlier processes left in a run folder this process
    now holds: partial files (`whole_file`) and TensorFlow's temporary checkpoint folders,
    each up to a whole model, which nothing else would ever remove."""
    leftovers = glob.glob(os.path.join(glob.escape(workdir), f".*{PARTIAL}*"))
    leftovers += glob.glob(os.path.join(glob.escape(workdir), CHECKPOINTS_DIR, "*_temp"))
    for path in leftovers:
        remove(path)


def _remove_dead_partials(folder, stem, suffix):
    """Removes partial files of `stem` + `suffix` that a process no longer running on this
    machine left (killed while it wrote: each up to a whole model, never read)."""
    pattern = os.path.join(glob.escape(folder), f".{glob.escape(stem)}.*{PARTIAL}{suffix}")
    for path in glob.glob(pattern):
        pid = os.path.basename(path)[len(stem) + 2:-len(PARTIAL + suffix)]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:  # gone: what it left is no one's
            with contextlib.suppress(FileNotFoundError):  # another writer was first
                remove(path)
        except OSError:  # alive, another user's: left alone
            pass


@contextlib.contextmanager
def whole_file(path):
    """Yields where to write `path`: a hidden partial file beside it, its suffix kept (Keras,
    OpenCV and matplotlib read the format from it), renamed to `path` when the block ends and
    removed when it raises (Ctrl-C, a full disk), so a reader sees the old file or the new
    one, never half. A block that writes nothing leaves `path` as it was."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    stem, suffix = os.path.splitext(name)
    _remove_dead_partials(folder, stem, suffix)
    # per process: concurrent writers (ingestion's workers) never share one
    partial = os.path.join(folder, f".{stem}.{os.getpid()}{PARTIAL}{suffix}")
    try:
        yield partial
        if os.path.exists(partial):
            os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def save_model(model, path):
    """Saves a Keras model whole or not at all (a run killed while saving left an empty
    model.keras every reader refused)."""
    with whole_file(path) as partial:
        model.save(partial)


def config_changes(a, b, prefix="config"):
    """Each field where two configs (as JSON dicts) differ: "config.x.y: a -> b"."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b))
                for d in config_changes(a.get(k), b.get(k), f"{prefix}.{k}")]
    return [] if a == b else [f"{prefix}: {a!r} -> {b!r}"]
