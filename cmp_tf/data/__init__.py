"""Input side of CMP: files and generated scenes -> (frame, next frame, flow) -> batches."""
import os

# Short real clips that ship with the package (see samples/ATTRIBUTION.md).
SAMPLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples")


def sample_clip(name):
    """Path of an embedded sample clip: bikes, carphone or bigbuckbunny."""
    return os.path.join(SAMPLES_DIR, f"{name}.mp4")
