"""Guidance: sparse motion vectors placed on the image as the model's `sparse` input."""
import numpy as np


def sparse_from_points(points, vectors, height, width):
    """Guidance points -> [H, W, 3] sparse input (u, v, mask).

    Args:
        points: [K, 2] (x, y) pixel coordinates, rounded to the nearest pixel.
        vectors: [K, 2] (u, v) motion in pixels at those points.
    Raises:
        ValueError: on shapes other than [K, 2], non-finite values or points off the image.
    """
    points, vectors = np.asarray(points, np.float64), np.asarray(vectors, np.float32)
    if points.ndim != 2 or points.shape[-1] != 2 or vectors.shape != points.shape:
        raise ValueError(f"points and vectors must both be [K, 2]; got {points.shape} and "
                         f"{vectors.shape}.")
    if not (np.isfinite(points).all() and np.isfinite(vectors).all()):
        raise ValueError("points and vectors must be finite; got NaN or infinity.")
    xy = np.round(points).astype(np.int64)
    off = (xy[:, 0] < 0) | (xy[:, 0] >= width) | (xy[:, 1] < 0) | (xy[:, 1] >= height)
    if off.any():
        raise ValueError(f"points must lie on the {width}x{height} image; "
                         f"{points[off][:3].tolist()} do not.")
    sparse = np.zeros((height, width, 3), np.float32)
    sparse[xy[:, 1], xy[:, 0], :2] = vectors
    sparse[xy[:, 1], xy[:, 0], 2] = 1.0
    return sparse


def uniform_points(height, width, count, rng):
    """`count` distinct pixels drawn uniformly, as [K, 2] (x, y)."""
    flat = rng.choice(height * width, size=min(count, height * width), replace=False)
    return np.stack([flat % width, flat // width], -1).astype(np.float32)
