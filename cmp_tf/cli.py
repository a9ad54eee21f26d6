"""The commands' shared entry point: flags are checked where they are used, and a mistake
(a bad flag, file or checkpoint: a ValueError naming it) ends as one usage line, no traceback."""
from absl import app


def main_of(run):
    """An absl `main(argv)` that refuses positional arguments and runs `run()`, turning its
    ValueError into a usage error."""

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
        try:
            run()
        except ValueError as error:
            raise app.UsageError(str(error)) from error

    return main
