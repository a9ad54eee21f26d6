"""`python -m export` behind its flags: a trained CMP (and its image encoder) -> SavedModel,
TFLite float32 / float16 / int8 and ONNX files, each checked against the Keras model.

    from export import export_lib
    model, config, path = export_lib.load_checkpoint("runs/default")
    report = export_lib.export(model, config, "exported/", source=path)

Writes into `out`: model_saved_model/, model.tflite, model_fp16.tflite, model_int8.tflite,
model.onnx, model_int8.onnx, the same for the encoder (encoder_*), export.json (the parity
report, sizes, latencies) and parity.md. Every CMP file loads with `cmp_tf.runtime.Propagator`.
"""
import json
import os
import tempfile
import time

import ml_collections
import numpy as np

from cmp_tf import data
from cmp_tf import rundir
from cmp_tf import runners
from cmp_tf.data import sampling
from cmp_tf.models import cmp as cmp_models
from cmp_tf.models import heads
from export import onnx as onnx_export
from export import parity
from export import savedmodel
from export import tflite

FORMATS = ("savedmodel", "tflite", "tflite_fp16", "tflite_int8", "onnx", "onnx_int8")
PRECISION = {"savedmodel": "float32", "tflite": "float32", "tflite_fp16": "float16",
             "tflite_int8": "int8", "onnx": "float32", "onnx_int8": "int8"}
_FILE = {"savedmodel": "{}_saved_model", "tflite": "{}.tflite", "tflite_fp16": "{}_fp16.tflite",
         "tflite_int8": "{}_int8.tflite", "onnx": "{}.onnx", "onnx_int8": "{}_int8.onnx"}
PARTS = ("model", "encoder")  # the CMP, and its image encoder alone (what transfer reuses)
REPORTS = (rundir.EXPORT_REPORT, "parity.md")
# In the folder while an export writes it: one cut short (Ctrl-C, a kill) is cleared and done
# again by the next, where an earlier whole export needs --overwrite.
UNFINISHED = "export.unfinished"
CMP_OUTPUTS = ("flow", "logits")
MAX_SIZE = 4096  # the largest --size side of a model without guidance fills (which bound it)


def artifact_name(fmt, part):
    """File or folder name of `part` ('model' or 'encoder') in format `fmt`."""
    return _FILE[fmt].format(part)


def export_names():
    """Every name an export may write into its folder: each format of each part, the reports."""
    return [artifact_name(fmt, part) for part in PARTS for fmt in FORMATS] + list(REPORTS)


def clear_earlier_export(out, overwrite=False):
    """Refuses to write into a folder holding an earlier export (without `overwrite`), or
    removes that whole export (with it, or when it was cut short: UNFINISHED), so the folder
    never holds files its export.json does not list. Files an export does not write are left
    alone. Returns the names removed."""
    rundir.check_folder_path(out, "--out")
    if not os.path.isdir(out):
        return []
    earlier = [name for name in export_names() if os.path.lexists(os.path.join(out, name))]
    unfinished = os.path.exists(os.path.join(out, UNFINISHED))
    if earlier and not overwrite and not unfinished:
        raise ValueError(f"--out={out} holds an earlier export ({', '.join(earlier)}): pass "
                         "--overwrite to replace all of it, or choose another --out.")
    for name in earlier + ([UNFINISHED] if unfinished else []):
        rundir.remove(os.path.join(out, name))
    return earlier


def load_checkpoint(path=None):
    """(Keras model, recipe, .keras path) of a run directory or .keras file (default: the
    newest run, else the shipped pretrained model). The recipe is the run's config.json, else
    the shipped model's (its data calibrates and checks the export)."""
    path = rundir.resolve_model_path(path or rundir.default_checkpoint())
    if rundir.model_format(path) != "keras":
        raise ValueError(f"{path} is an exported model ({rundir.model_format(path)}), not a run "
                         "directory or a .keras file: export starts from the Keras model.")
    model = runners.KerasRunner(path).model
    config, _ = rundir.read_config(path)
    return model, config, path


def default_out(checkpoint):
    """Where an export of `checkpoint` goes by default (rundir.results_dir: <run>/export, and
    runs/pretrained/export for the shipped model: nothing is written into the package)."""
    return rundir.results_dir(checkpoint, rundir.EXPORT_DIR)


def _sources(config, split):
    sources = tuple(config.data.get(split) or ())
    return sources or data.sample_splits()[0 if split == "train" else 1]


def real_samples(config, split, count, size):
    """`count` batch-1 samples {image, sparse, flow, valid} of a recipe's data pipeline at
    `size` (H, W): "train" (random crops, augmentations; calibration) or "val" (centre crops,
    fixed guidance; parity). Falls back to the embedded clips where the recipe names none."""
    from cmp_tf.data import pipeline

    config = ml_collections.ConfigDict(config.to_dict())  # an unlocked copy
    config.data[split] = _sources(config, split)
    config.data.crop = tuple(size)
    config.data.short_size = max(int(config.data.short_size), *size)
    config.data.batch_size = 1
    samples = []
    for x, y in pipeline.make_dataset(config, split, guidance=True).take(count):
        samples.append({"image": x["image"].numpy(), "sparse": x["sparse"].numpy(),
                        "flow": y["flow"].numpy(), "valid": y["valid"].numpy()})
    if not samples:
        raise ValueError(f"config.data.{split}={config.data[split]} gave no samples.")
    return samples


def check_size(size, model):
    """(H, W) the fixed-size files take; ValueError naming --size if the model cannot."""
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ValueError(f"--size={','.join(map(str, size))} must be H,W, or one side for a "
                         "square.")
    return cmp_models.check_sides(model, size, "--size",
                                  largest=cmp_models.traced_max_side(model) or MAX_SIZE)


def _metadata(model, part, fmt, size, dynamic, source):
    """What the runtime needs to feed a file (DESIGN §8), and where it came from."""
    guard = model.get_layer("input_guard")
    fixed = fmt.startswith("tflite") and not dynamic
    opset = onnx_export.OPSET if fmt.startswith("onnx") else None
    return {"model": part, "format": fmt, "multiple": guard.multiple,
            "minimum": guard.minimum if part == "model" else guard.multiple,
            "maximum": cmp_models.traced_max_side(model) if part == "model" else None,
            "size": list(size) if fixed else None, "opset": opset, "source": source,
            "fade": heads.fade_of(model) if part == "model" else None,
            "fill_stride": cmp_models.fill_stride(model) if part == "model" else None}


AUTO = "auto"  # fill_stride: the fills' cells for the files' size (cmp.fill_stride_for_size)


def model_for_files(model, config, size, fill_stride=AUTO, dynamic=False):
    """(model, config) the files are made from: `model` with its fills on `fill_stride` px
    cells (cmp.with_fill_stride), the same weights. AUTO: the cells for the files' fixed
    `size` (cmp.fill_stride_for_size; fewer cells for sizes well above the training crop,
    at a measured cost in EPE that export reports); the trained cells for files of free size
    (`dynamic`) and for heads without a blend of fills. None: the trained cells."""
    if fill_stride is None or cmp_models.fill_stride(model) is None:
        if fill_stride not in (None, AUTO):
            raise ValueError(f"--fill_stride={fill_stride}: this model's head "
                             f"({config.model.head!r}) has no fills whose cells can change.")
        return model, config
    if fill_stride == AUTO:
        if dynamic:
            return model, config
        fill_stride = cmp_models.fill_stride_for_size(model, config, size)
    try:
        return cmp_models.with_fill_stride(model, config, fill_stride)
    except ValueError as error:
        raise ValueError(f"--{error}") from error


def export(model, config, out, formats=FORMATS, size=None, calibration=64, parity_samples=16,
           threads=None, repeats=5, encoder=True, logits=True, dynamic_tflite=False, source=None,
           log=print, overwrite=False, fill_stride=AUTO):
    """Writes the CMP `model` (and its encoder) in `formats` to `out`, checks parity.

    Args:
        size: (H, W) of the fixed-size files (TFLite) and of the parity samples; default the
            recipe's crop.
        calibration: training-pipeline samples that calibrate the int8 files.
        parity_samples: validation samples every file is compared on.
        threads: CPU threads for LiteRT and ONNX Runtime (default: all cores).
        logits: serve the bin logits next to the flow.
        dynamic_tflite: TFLite files with free height and width (batch 1) instead of `size`.
        source: where `model` came from, recorded in the files' metadata and the report.
        overwrite: replace an earlier export in `out` (all of its files); without it, a
            folder holding one is refused (clear_earlier_export).
        fill_stride: the fill cells in px of the fixed-size files, AUTO or None
            (`model_for_files`); files of free size (SavedModel, ONNX, `dynamic_tflite`) keep
            the trained cells under AUTO, since they also serve small images. The report gives
            the Keras EPE on each file's cells (`keras_epe_by_fill_stride`).
    Returns:
        The report (also written as export.json and parity.md).
    Raises:
        parity.ParityError: a float32 CMP file differs from Keras by more than
            parity.FLOAT32_MEAN_TOLERANCE_PX on average.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ValueError(f"--formats={list(formats)}: unknown {unknown}; known: "
                         f"{', '.join(FORMATS)}.")
    size = check_size(size or tuple(config.data.crop), model)
    quantized = [f for f in formats if PRECISION[f] == "int8"]
    if quantized and calibration < 1:
        raise ValueError(f"--calibration={calibration} must be positive: the int8 files "
                         f"({', '.join(quantized)}) are calibrated on that many samples.")
    if parity_samples < 1:
        raise ValueError(f"--parity_samples={parity_samples} must be positive.")
    if threads is not None and (not sampling.is_int(threads) or threads < 1):
        raise ValueError(f"--threads={threads} must be a positive count of CPU threads (default: "
                         "all cores).")
    threads = threads or os.cpu_count()
    # The CMP as the files of free size hold it, and as the fixed-size (.tflite) ones do: the
    # same model unless AUTO gives the fixed size its own cells.
    free = fixed = model_for_files(model, config, size, fill_stride, dynamic=True)[0]
    if fill_stride == AUTO and any(f.startswith("tflite") for f in formats):
        fixed = model_for_files(model, config, size, fill_stride, dynamic_tflite)[0]
    # The data comes first: an export that cannot calibrate or check itself removes nothing.
    calib = real_samples(config, "train", calibration, size) if quantized else []
    from cmp_tf.data import pipeline

    pipeline.check_sources(_sources(config, "val"), "config.data.val")
    unfinished = os.path.exists(os.path.join(out, UNFINISHED))
    removed = clear_earlier_export(out, overwrite)
    if removed:
        log(f"removed the {'unfinished' if unfinished else 'earlier'} export in {out}: "
            f"{', '.join(removed)}")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, UNFINISHED), "w") as f:
        f.write("An export is writing this folder; if it was cut short, the same command "
                "clears it and exports again.\n")
    parts = {"model": model}
    if encoder:
        parts["encoder"] = model.get_layer("image_encoder")
    rows = []
    files, began = len(parts) * len(set(formats)), time.perf_counter()  # for the log's ETA
    for part, whole in parts.items():
        feeds = [{k: s[k] for k in savedmodel.input_specs(whole)} for s in calib]
        outputs = (CMP_OUTPUTS if logits else ("flow",)) if part == "model" else None
        for fmt in [f for f in FORMATS if f in formats]:  # int8 ONNX quantizes the float one
            start = time.perf_counter()
            path = os.path.join(out, artifact_name(fmt, part))
            cmp = fixed if fmt.startswith("tflite") else free
            net = cmp if part == "model" else whole
            meta = _metadata(cmp, part, fmt, size, dynamic_tflite, source)
            if fmt == "savedmodel":
                savedmodel.write(net, path, outputs=outputs, metadata=meta)
            elif fmt == "onnx":
                _write_onnx(net, path, outputs, meta)
            elif fmt == "onnx_int8":
                _write_onnx_int8(net, path, outputs, meta, out, formats, part, feeds)
            else:
                flat = tflite.convert(net, size, PRECISION[fmt], feeds, meta, dynamic_tflite,
                                      outputs)
                with open(path, "wb") as f:
                    f.write(flat)
            rows.append(dict(part=part, format=fmt, artifact=os.path.basename(path),
                             precision=PRECISION[fmt], bytes=parity.file_bytes(path),
                             dynamic=meta["size"] is None, fill_stride=meta["fill_stride"],
                             seconds_to_export=time.perf_counter() - start))
            left = (time.perf_counter() - began) / len(rows) * (files - len(rows))
            log(f"wrote {path} ({rows[-1]['bytes'] / 2**20:.2f} MB, "
                f"{rows[-1]['seconds_to_export']:.0f} s; file {len(rows)} of {files}"
                + (f", about {left:.0f} s to go)" if len(rows) < files else ")"))
    log(f"checking the {len(rows)} files against Keras on {parity_samples} validation samples "
        f"(and timing each, median of {repeats})")
    cmps = {cmp_models.fill_stride(m): m for m in (free, fixed)}  # the free files' cells first
    report = check_parity({**parts, "model": cmps}, out, rows, config, size, parity_samples,
                          threads, repeats)
    report.update(checkpoint=source, formats=list(formats),
                  calibration_samples=len(calib), opset=onnx_export.OPSET)
    with open(os.path.join(out, rundir.EXPORT_REPORT), "w") as f:
        json.dump(report, f, indent=1)
    text = parity.markdown(report)
    with open(os.path.join(out, "parity.md"), "w") as f:
        f.write(text + "\n")
    os.remove(os.path.join(out, UNFINISHED))  # whole: only --overwrite replaces it now
    log(text)
    parity.check(report["rows"])
    return report


def _write_onnx(net, path, outputs, meta):
    """ONNX converts from a SavedModel of its own, in a temporary folder: with the nearest
    fills in their compact form, which ONNX Runtime runs faster (savedmodel.compact_fills)."""
    with tempfile.TemporaryDirectory() as tmp:
        with savedmodel.compact_fills(net):
            savedmodel.write(net, tmp, outputs=outputs)
        onnx_export.write(tmp, path, meta)


def _write_onnx_int8(net, path, outputs, meta, out, formats, part, feeds):
    """Quantizes the float ONNX file: the one written, else one in a temporary folder."""
    if "onnx" in formats:
        onnx_export.quantize(os.path.join(out, artifact_name("onnx", part)), path, feeds, meta,
                             tflite.head_inputs(net))
        return
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "float.onnx")
        _write_onnx(net, source, outputs, None)
        onnx_export.quantize(source, path, feeds, meta, tflite.head_inputs(net))


def check_parity(parts, out, rows, config, size, count, threads, repeats):
    """Fills `rows` with each file's parity, latency and size; returns the report. The CMP
    part is {fill stride: Keras model}: each file is compared with the model on its fills'
    cells (`export` makes the fixed-size files' coarser at large sizes); the first, the cells
    of the files of free size, gives the report's Keras EPE and latency."""
    import tensorflow as tf

    samples = real_samples(config, "val", count, size)
    models = parts["model"]
    references, forwards = {}, {}
    for stride, model in models.items():
        forwards[stride] = tf.function(
            lambda image, sparse, model=model: model({"image": image, "sparse": sparse},
                                                     training=False)["flow"])
        references[stride] = np.concatenate([forwards[stride](s["image"], s["sparse"]).numpy()
                                             for s in samples])
    own = next(iter(models))
    first = samples[0]
    report = dict(size=list(size), threads=threads, repeats=repeats, samples=len(samples),
                  data=", ".join(os.path.basename(str(s)) for s in _sources(config, "val")),
                  keras_epe=parity.epe(references[own], samples),
                  keras_latency_s=parity.median_seconds(
                      lambda: forwards[own](first["image"], first["sparse"]).numpy(), repeats))
    if len(models) > 1:
        report["keras_epe_by_fill_stride"] = {stride: parity.epe(reference, samples)
                                             for stride, reference in references.items()}
    images = [s["image"] for s in samples]
    encoder_reference = None
    if "encoder" in parts:
        encoder = tf.function(lambda image: parts["encoder"](image, training=False))
        encoder_reference = [{k: v.numpy() for k, v in encoder(image).items()}
                             for image in images]
        report["keras_encoder_latency_s"] = parity.median_seconds(
            lambda: encoder(images[0])["features"].numpy(), repeats)
    for row in rows:
        path = os.path.join(out, row["artifact"])
        if row["part"] == "model":
            row.update(parity.cmp_parity(path, references[row["fill_stride"]], samples, threads,
                                         repeats))
        else:
            row.update(parity.encoder_parity(path, encoder_reference, images, threads, repeats))
    report["rows"] = rows
    return report
