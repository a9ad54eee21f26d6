"""Name -> builder tables, so a config picks model parts by string."""
import inspect

_BUILDERS = {}


def register(kind, name):
    """Decorator adding `fn` as the builder of `kind`/`name`; duplicates are a programming error."""

    def decorator(fn):
        table = _BUILDERS.setdefault(kind, {})
        if name in table:
            raise ValueError(f"{kind} {name!r} is registered twice.")
        table[name] = fn
        return fn

    return decorator


def names(kind):
    """Registered names of one kind, sorted, for error messages and docs."""
    return sorted(_BUILDERS.get(kind, {}))


def _builder(kind, name):
    table = _BUILDERS.get(kind, {})
    if name not in table:
        raise ValueError(
            f"config.model.{kind}={name!r} is unknown; known: {', '.join(names(kind))}.")
    return table[name]


def parameters(kind, name):
    """Argument names the builder `kind`/`name` takes."""
    return tuple(inspect.signature(_builder(kind, name)).parameters)


def defaults(kind, name):
    """{option: default} of the builder `kind`/`name`: the arguments a recipe may set (those
    without a default are derived by the caller)."""
    params = inspect.signature(_builder(kind, name)).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def check_options(options):
    """`config.model.options` maps part names to builder kwargs; a key must name a known part."""
    known = {name for table in _BUILDERS.values() for name in table}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"config.model.options has entries for unknown parts {unknown}; "
                         f"known parts: {', '.join(sorted(known))}.")


def build(kind, name, options=None, **context):
    """Builds the part `kind`/`name` with `options[name]` as kwargs, if any.

    `context` holds arguments the caller derives (e.g. channels); those the builder does not
    take are left out (a plain decoder takes no skips).
    """
    if not isinstance(name, str):
        raise ValueError(f"config.model.{kind} must be a part name; got {name!r}.")
    builder = _builder(kind, name)
    kwargs = dict((options or {}).get(name, {}))
    params = inspect.signature(builder).parameters
    context = {k: v for k, v in context.items() if k in params}
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        options = sorted(set(params) - set(context))
        raise ValueError(f"config.model.options.{name} has unknown options {unknown}; "
                         f"it takes {options}.")
    clash = sorted(set(kwargs) & set(context))
    if clash:
        raise ValueError(f"config.model.options.{name} sets {clash}, which the model derives "
                         "from other config fields; remove them.")
    return builder(**kwargs, **context)
