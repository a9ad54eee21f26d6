r"""Serves the in-browser page: the model runs in the browser (onnxruntime-web), the server only
hands out files.

  python -m cmp_tf.apps.browser.install                      # once: the page's runtime
  python -m export --formats=onnx --noencoder --out=exported  # an .onnx of your model
  python -m cmp_tf.apps.browser --model=exported/model.onnx [--port=8000]

then open http://127.0.0.1:8000/: load an image, drag arrows (a click pins a point), press
Propagate; the flow, its latency and the animation are computed on the page.
"""
from absl import app
from absl import flags

from cmp_tf import cli
from cmp_tf.apps.browser import server as server_lib
from cmp_tf.apps.web import server as web_server

_MODEL = flags.DEFINE_string("model", None, "An exported .onnx file.", required=True)
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to bind: localhost by default.")
_PORT = flags.DEFINE_integer("port", 8000, "Port; 0 picks a free one.", lower_bound=0,
                             upper_bound=65535)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
    server = server_lib.make_server(_MODEL.value, _HOST.value, _PORT.value, verbose=True,
                                    name="--model")
    web_server.serve(server, f"the page and {_MODEL.value}")


if __name__ == "__main__":
    cli.run(main)
