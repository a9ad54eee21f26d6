r"""Exports a trained CMP to SavedModel, TFLite (float32, float16, int8) and ONNX, and checks
every file against the Keras model on real samples.

  python -m export --checkpoint=runs/default --out=exported
  python -m export --formats=tflite,tflite_int8 --size=384,384 --calibration=128
  python -m export --size=384 --fill_stride=trained     # keep the fills' trained cells

Writes the files, export.json (sizes, latencies, parity) and parity.md to --out; fails if a
float32 file's flow differs from Keras by more than 0.01 px on average.
"""
from absl import app
from absl import flags
from absl import logging

from cmp_tf import cli
from export import export_lib

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Run directory or .keras file; default: newest under runs/, else the "
    "pretrained model that ships with cmp_tf.")
_OUT = flags.DEFINE_string("out", None, "Output folder; default <run>/export.")
_FORMATS = flags.DEFINE_list("formats", list(export_lib.FORMATS),
                             f"Any of {', '.join(export_lib.FORMATS)}.")
_SIZE = flags.DEFINE_list("size", [], "H,W (or one side for a square) of the fixed-size files "
                          "(TFLite) and of the parity samples; default the recipe's crop.")
_CALIBRATION = flags.DEFINE_integer("calibration", 64,
                                    "Training-pipeline samples that calibrate int8 files.")
_PARITY = flags.DEFINE_integer("parity_samples", 16, "Validation samples for the parity check.")
_THREADS = flags.DEFINE_integer("threads", None, "CPU threads for timing; default all cores.")
_ENCODER = flags.DEFINE_bool("encoder", True, "Also export the image encoder alone.")
_FADE = flags.DEFINE_bool("fade", True, "Keep the model's learned fade of a guide's motion with "
                          "distance; --nofade exports files without it (footage from a moving "
                          "camera; the files' metadata records which).")
_LOGITS = flags.DEFINE_bool("logits", True, "Serve the bin logits next to the flow.")
_DYNAMIC_TFLITE = flags.DEFINE_bool("dynamic_tflite", False,
                                    "TFLite files with free height and width instead of --size.")
_FILL_STRIDE = flags.DEFINE_string(
    "fill_stride", export_lib.AUTO, "The files' guidance fills on cells of this many px (a "
    "power of two up to the decoder's stride), 'trained' for the model's own, or 'auto': "
    "coarser cells in fixed-size .tflite files well above the training crop (4 px instead of "
    "2 at 384^2 for the shipped model: its fills half the time, a cost in EPE export.json "
    "reports), the trained ones in files of free size (SavedModel, ONNX).")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace an earlier export in --out: all of its files (every format, "
    "export.json, parity.md) are removed first, so none is left that the new export.json does "
    "not list. Without it, a folder holding an earlier export is refused (one cut short is "
    "cleared and done again). Other files stay.")


def run():
    logging.set_verbosity(logging.WARNING)  # TensorFlow's saving chatter
    try:
        model, config, path = export_lib.load_checkpoint(_CHECKPOINT.value)
    except ValueError as error:
        raise app.UsageError(f"--checkpoint={_CHECKPOINT.value or '(newest run)'}: "
                             f"{error}") from error
    if not _FADE.value:
        from cmp_tf.models import heads

        try:
            heads.set_fade(model, False)
        except ValueError as error:
            raise app.UsageError(f"--nofade: {error}") from error
    try:
        size = [int(s) for s in _SIZE.value] * (2 if len(_SIZE.value) == 1 else 1) or None
    except ValueError as error:
        raise app.UsageError(f"--size={_SIZE.value} must be H,W or one side in pixels.") from error
    fill_stride = {"auto": export_lib.AUTO, "trained": None}.get(_FILL_STRIDE.value)
    if fill_stride is None and _FILL_STRIDE.value != "trained":
        try:
            fill_stride = int(_FILL_STRIDE.value)
        except ValueError as error:
            raise app.UsageError(f"--fill_stride={_FILL_STRIDE.value!r} must be 'auto', "
                                 "'trained' or a number of px.") from error
    out = _OUT.value or export_lib.default_out(path)
    export_lib.export(model, config, out, _FORMATS.value, size, _CALIBRATION.value,
                      _PARITY.value, _THREADS.value, encoder=_ENCODER.value,
                      logits=_LOGITS.value, dynamic_tflite=_DYNAMIC_TFLITE.value, source=path,
                      overwrite=_OVERWRITE.value, fill_stride=fill_stride)
    print(f"\nWrote {out}/: the files, export.json and parity.md")


main = cli.main_of(run)


if __name__ == "__main__":
    cli.run(main)
