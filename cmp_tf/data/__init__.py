"""Input side of CMP: files and generated scenes -> (frame, next frame, flow) -> batches."""
import os

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
