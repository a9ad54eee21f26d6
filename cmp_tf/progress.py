"""Progress bars that stay readable where stderr is a log file.

On a terminal a bar is tqdm's, redrawn in place. Written to a file or a pipe (`cmd 2> log.txt`,
a job scheduler's log), tqdm's redraws are carriage returns: a run of a few minutes left
thousands of them on one line, which `less`, editors and log viewers show as one unreadable
line. There the bar is instead one plain line, with its count, rate and ETA, at most every
LOG_INTERVAL_S seconds, and one when it ends.
"""
import sys

LOG_INTERVAL_S = 30.0  # seconds between a bar's lines in a log file


class _Lines:
    """A stream for tqdm that turns each redraw into a line of its own: no carriage return, no
    padding, nothing for a clear (tqdm.write clears bars with blank redraws)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        text = text.replace("\r", "").rstrip()
        if text:
            self.stream.write(text + "\n")

    def flush(self):
        self.stream.flush()


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or bare stream
        return False


def bar(iterable=None, **kwargs):
    """A tqdm bar (same arguments) on stderr, or on `file`; where that is no terminal, a line
    per LOG_INTERVAL_S seconds instead of a redraw per update."""
    from tqdm import tqdm

    stream = kwargs.pop("file", None) or sys.stderr
    if kwargs.get("disable") or _is_terminal(stream):
        return tqdm(iterable, file=stream, **kwargs)
    kwargs.pop("dynamic_ncols", None)
    kwargs.setdefault("mininterval", LOG_INTERVAL_S)
    kwargs.setdefault("maxinterval", max(kwargs["mininterval"], 10.0))
    return tqdm(iterable, file=_Lines(stream), **kwargs)
