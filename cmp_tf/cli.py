"""The commands' shared entry point: flags are checked where they are used, and a mistake
(a bad flag, file, config field or checkpoint: a ValueError naming it) ends as one line on
stderr and exit status 1, with no traceback and without the whole usage text before it."""
import os
import re
import sys

from absl import app
from absl import flags

HINT = "Run with --help for the flags."
INTERRUPTED_EXIT_CODE = 130  # a shell's code for a command ended by Ctrl-C
# The checkout the commands and recipes (configs/) live in.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The flags the helpers below define are the calling command's own: absl lists a module's
# flags under --helpshort, and would list them under this module, not the command's.
flags.disclaim_key_flags()
_CONFIG_FLAGS = []  # the names define_config gave its recipe flags


def _missing_part(kind, error, trace, previous=sys.excepthook):
    """A command (anything importing this module) that ends on a part its install lacks
    (TensorFlow under `[lite]`, as it is imported or run) says so in one line naming the command
    and what to install, instead of a traceback; any other error goes to `previous`."""
    from cmp_tf import extras  # only here, on the way out

    line = extras.missing_line(command(), error) \
        if isinstance(error, ModuleNotFoundError) else None
    if line is None:
        return previous(kind, error, trace)
    sys.stderr.write(f"{line}\n")  # the interpreter still exits with status 1


sys.excepthook = _missing_part


def command():
    """How the running command was started: `python -m export`, `python train.py`."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None:
        return f"python -m {spec.name.removesuffix('.__main__')}"
    return f"python {sys.argv[0]}"


def main_of(run):
    """An absl `main(argv)` that refuses positional arguments and runs `run()` (`cli.run`
    prints its ValueError as one line)."""

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
        run()

    return main


def run(main):
    """`app.run(main)`, but a usage error, a ValueError (how cmp_tf names a bad file, field or
    value), an OSError (a folder it may not write, a full disk: the system names the path),
    or a flag value the parser refuses (a `--config.*` override naming no field of the
    recipe, a recipe file that does not load), is printed as its message alone, and Ctrl-C as
    one line with the shell's exit status 130: absl prints the module's whole docstring above a
    usage error, and a traceback around a ValueError or a KeyboardInterrupt."""

    def short_usage(argv):
        try:
            return main(argv)
        except app.UsageError as error:
            fail(str(error), error.exitcode)
        except ValueError as error:  # its own lines kept: a list of tensors reads as one
            fail(str(error))
        except OSError as error:  # a folder it may not write, a full disk: named by the system
            fail(str(error), hint=False)
        except KeyboardInterrupt:  # Ctrl-C: what was written whole stays; no traceback
            fail("Interrupted.", INTERRUPTED_EXIT_CODE, hint=False)

    app.run(short_usage, flags_parser=parse_flags)


def parse_flags(argv):
    """absl's flag parsing; errors a flag's own parser raises (ml_collections' config flags
    raise AttributeError, KeyError, OSError and others, not absl's flags.Error) become one
    line naming the flag's value."""
    try:
        parsed = flags.FLAGS(argv)
    except Exception as error:  # noqa: BLE001  a flag parser's own error: no traceback
        # a --config.* override applied to a recipe file that is not there
        missing = re.search(r"Attempted \[Relative path\]:\s*(\S+)\s*\[Errno 2\]", str(error))
        if missing:
            flag = re.search(r"Failed loading config file (\w+?)_config", str(error))
            fail(missing_recipe(flag.group(1) if flag else "config", missing.group(1)))
        not_recipe = re.search(r"module '(\w+?)_config' has no attribute 'get_config'",
                               str(error))
        if not_recipe:  # a helper module such as configs/common.py
            name = not_recipe.group(1)
            given = [arg.split("=", 1)[1] for arg in argv if arg.startswith(f"--{name}=")]
            fail(f"--{name}={given[-1] if given else ''}: not a recipe (it has no "
                 "get_config()); the recipes are the other files under configs/.")
        text = without_traceback(str(error)) if isinstance(error, flags.Error) \
            else message_of(error)
        fail(f"Flags parsing error: {text}")
    for name in _CONFIG_FLAGS:
        _refuse_replaced_dicts(name, argv)
    return parsed


def _refuse_replaced_dicts(name, argv):
    """A `--name.field={...}` override sets the field to that dict alone: the recipe's other
    keys there were dropped without a word (a different model trained). Refused where it drops
    any, naming them and the per-key form."""
    overrides = [re.fullmatch(rf"--{re.escape(name)}\.([\w.]+)=(\s*\{{.*)", arg, re.S)
                 for arg in argv[1:]]
    overrides = [match.groups() for match in overrides if match]
    if not overrides:
        return
    import ast

    recipe = _recipe(flags.FLAGS[name].config_filename)
    for field, value in overrides:
        before = recipe
        for key in field.split("."):
            before = before.get(key) if hasattr(before, "get") else None
        try:
            given = set(ast.literal_eval(value))
        except (ValueError, SyntaxError, TypeError):
            continue  # the parser took it, or said what is wrong with it
        dropped = sorted(set(before) - given) if hasattr(before, "keys") else []
        if dropped:
            fail(f"--{name}.{field}={value.strip()} would replace the recipe's whole "
                 f"{field}, dropping {', '.join(dropped)}: set its fields one at a time, "
                 f"--{name}.{field}.<field>=<value>.")


def recipe_parts(filename):
    """A `--config` value `path[:argument]` as (path, argument); argument is "" when none
    (ml_collections' own split: the first colon)."""
    path, _, argument = filename.partition(":")
    return path, argument


def _recipe(filename):
    """The recipe `path[:argument]` as its file gives it, before any override."""
    import importlib.util

    path, argument = recipe_parts(filename)
    spec = importlib.util.spec_from_file_location("cmp_tf_recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(argument) if argument else module.get_config()


def without_traceback(text):
    """`text` with a traceback in it cut to its last line, the error itself: ml_collections
    puts the whole traceback of a recipe that raised (a typo in its argument) into its flag
    error."""
    head, marker, trace = text.partition("Traceback (most recent call last):")
    if not marker:
        return text
    last = [line.strip() for line in trace.splitlines() if line.strip()][-1:]
    return " ".join([head.strip(), *last])


def message_of(error):
    """The readable text of `error`: ml_collections wraps a KeyError (whose str() is its
    message's repr) in an AttributeError for a field the config does not have."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    text = error.args[0] if len(error.args) == 1 and isinstance(error.args[0], str) \
        else str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(error, KeyError) and lines:
        lines[0] = f"no field {lines[0]} in the config;"
    if isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] == "configs":
        lines.append("(the recipes import the configs package, configs/common.py: run from the "
                     "cmp_tf checkout, or put its folder on PYTHONPATH)")
    return " ".join(lines)


def fail(message, exitcode=1, hint=True):
    """Ends the command with `message` on stderr (and HINT with `hint`: a usage mistake)."""
    sys.stderr.write(f"{message}\n{HINT}\n" if hint else f"{message}\n")
    sys.exit(exitcode)


def define_config(name, default, help_string, **kwargs):
    """`config_flags.DEFINE_config_file`, which loads the recipe and applies its `--name.*`
    overrides from the command line as it is defined: a field the recipe does not have, a value
    of the wrong type or a recipe that does not load ends as one line naming it."""
    from ml_collections import config_flags

    if os.path.isfile(os.path.join(CHECKOUT, "configs", "common.py")) and \
            CHECKOUT not in sys.path:  # the recipes import configs.common, from any folder
        sys.path.append(CHECKOUT)  # last: a `configs` package in the current folder comes first
    if default and not os.path.isabs(default) and not os.path.exists(default) and \
            os.path.isfile(os.path.join(CHECKOUT, default)):  # a command run from elsewhere
        default = os.path.join(CHECKOUT, default)
    _CONFIG_FLAGS.append(name)
    try:
        return config_flags.DEFINE_config_file(name, default, help_string, **kwargs)
    except Exception as error:  # raised at import, before absl could report it
        fail(f"--{name}: {message_of(error)}")


def define_output(name, default, help_string, kind="folder"):
    """A string flag naming where a command writes (`kind`: a "folder", or a "file"), refused
    as the flags are parsed (one line) where it is, or lies in, something else: a benchmark
    learns it before measuring, not when its results are to be saved."""
    from cmp_tf import rundir

    if kind not in ("folder", "file"):
        raise ValueError(f"kind must be 'folder' or 'file'; got {kind!r}.")
    check = rundir.check_folder_path if kind == "folder" else rundir.check_file_path
    holder = flags.DEFINE_string(name, default, help_string)

    def valid(value):
        if value is None:
            return True
        try:
            check(value, f"--{name}")
        except ValueError as error:
            raise flags.ValidationError(str(error)) from error
        return True

    flags.register_validator(name, valid)
    return holder


def config_of(holder):
    """The recipe a `define_config` flag holds. ml_collections defers a recipe file that did
    not load (missing, or an error in it) to the first use of the config; it is a usage error
    naming the file here instead."""
    config = holder.value
    try:
        config.keys()
    except OSError as error:
        path, _ = recipe_parts(flags.FLAGS[holder.name].config_filename or "")
        if path and not os.path.isfile(path):
            raise app.UsageError(missing_recipe(holder.name, path)) from error
        raise app.UsageError(f"--{holder.name}: {message_of(error)}") from error
    return config


def checkout_has_recipes():
    """Whether the recipes (configs/) lie beside the package: they come with the repository,
    not with an installed package."""
    return os.path.isdir(os.path.join(CHECKOUT, "configs"))


def missing_recipe(name, path):
    """The line naming a recipe file `--name=path` that is not there, and where the checkout
    holds one of that name (a command run from another folder)."""
    where = os.path.join(CHECKOUT, path)
    found = f"; it is at {where}" if not os.path.isabs(path) and os.path.isfile(where) else ""
    if not found and not checkout_has_recipes():
        found = ("; the recipes (configs/) come with the cmp_tf repository, not with the "
                 "installed package: name one there")
    return f"--{name}={path}: no such recipe file (relative to {os.getcwd()}){found}."
