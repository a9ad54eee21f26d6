r"""Serves the interactive page on this machine only (unless --host says otherwise).

  python -m cmp_tf.apps.web [--model=exported/model.tflite] [--port=8000]

then open http://127.0.0.1:8000/: load an image, drag arrows (a click without dragging pins a
point), or place positive / negative clicks, and press Animate or Annotate.
"""
from absl import app
from absl import flags

from cmp_tf import cli
from cmp_tf.apps import inputs
from cmp_tf.apps.web import server as server_lib

_MODEL = flags.DEFINE_string("model", None, "A run directory, .keras, .tflite, .onnx or "
                             "SavedModel folder; default the model that ships with cmp_tf.")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to bind: localhost by default, so "
                            "no other machine reaches the page.")
_PORT = flags.DEFINE_integer("port", 8000, "Port; 0 picks a free one.", lower_bound=0,
                             upper_bound=65535)
_MAX_SIDE = flags.DEFINE_integer("max_side", server_lib.MAX_SIDE, "Largest image side accepted.",
                                 lower_bound=1)
_NETWORK_SIDE = flags.DEFINE_integer("network_side", 512, "The network sees images shrunk to "
                                     "this longer side at most; -1: full size.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
    # The address first: a taken port is named before the model loads.
    server_lib.bind(server_lib.Server, (_HOST.value, _PORT.value), None).server_close()
    print(f"Loading the model ({_MODEL.value or 'the shipped one'})...", flush=True)
    propagator = inputs.load_propagator(_MODEL.value, "--model", "--network_side",
                                        max_side=_NETWORK_SIDE.value)
    propagator.warm_up()  # the first request need not wait for the model's first call
    server = server_lib.make_server(propagator, _HOST.value, _PORT.value,
                                    max_side=_MAX_SIDE.value, verbose=True)
    server_lib.serve(server, f"{propagator.path} ({propagator.format})")


if __name__ == "__main__":
    cli.run(main)
