"""Input side of CMP: files and generated scenes -> (frame, next frame, flow) -> batches."""
import os

# A relative config.data.cache_dir is taken under this folder when the variable is set (one
# cache for every working folder, or a scratch disk), else under the current folder.
CACHE_HOME_ENV = "CMP_TF_CACHE_HOME"
# Short real clips that ship with the package (see samples/ATTRIBUTION.md).
SAMPLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples")


def sample_clip(name):
    """Path of an embedded sample clip: bikes, carphone or bigbuckbunny."""
    return os.path.join(SAMPLES_DIR, f"{name}.mp4")


# Train / validation split of the embedded clips, by clip, so validation is unseen video.
SAMPLE_SPLITS = (("bikes", "bigbuckbunny"), ("carphone",))


def sample_splits():
    """(train, val) paths of the embedded clips: the data of the CPU recipes, and what
    evaluation and export calibration fall back to."""
    return tuple(tuple(sample_clip(name) for name in split) for split in SAMPLE_SPLITS)


def cache_dir(path):
    """`config.data.cache_dir` as the folder ingested shards go to (see CACHE_HOME_ENV)."""
    path = os.fspath(path)
    home = os.environ.get(CACHE_HOME_ENV)
    return os.path.join(home, path) if home and not os.path.isabs(path) else path
