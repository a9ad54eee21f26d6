"""Generated scenes with exact flow: a teacher-free signal where every flow vector is known."""
import cv2
import numpy as np


def _texture(rng, height, width, blur):
    """Smoothed colour noise: enough structure to be tracked, none of it repeating."""
    noise = rng.uniform(0, 255, (height, width, 3)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), blur)
    lo, hi = noise.min(), noise.max()
    return ((noise - lo) / max(hi - lo, 1e-6) * 255).astype(np.uint8)


def moving_square(size=64, square=32, background_motion=(-2, 1), square_motion=(5, -3),
                  blur=1.5, seed=0):
    """A textured square moving over a textured, itself moving, background.

    Motions are whole pixels (u, v), so both frames are exact crops of the textures and the
    flow is exact everywhere; the square occludes the background it covers in either frame.

    Returns:
        (frame1, frame2, flow): uint8 [size, size, 3] twice and float32 [size, size, 2], the
        flow from frame1 to frame2.
    """
    motions = np.array([background_motion, square_motion])
    if not np.array_equal(motions, np.round(motions)):
        raise ValueError(f"motions must be whole pixels; got {background_motion}, {square_motion}.")
    if not 0 < square < size:
        raise ValueError(f"square must be between 0 and size={size}; got {square}.")
    margin = int(np.abs(motions).max())
    if 2 * margin + square > size:
        raise ValueError(f"square {square} moving {margin}px does not fit in {size}px.")
    rng = np.random.default_rng(seed)
    pad = margin
    background = _texture(rng, size + 2 * pad, size + 2 * pad, blur)
    patch = _texture(rng, square, square, blur)
    (bu, bv), (su, sv) = motions.astype(int)
    # Start half a step back from the centre so the square stays in view in both frames.
    y0, x0 = (size - square) // 2 - sv // 2, (size - square) // 2 - su // 2

    def render(t):
        y, x = pad - bv * t, pad - bu * t  # the background moves by (bu, bv) per frame
        frame = background[y:y + size, x:x + size].copy()
        y, x = y0 + sv * t, x0 + su * t
        frame[y:y + square, x:x + square] = patch
        return frame

    flow = np.empty((size, size, 2), np.float32)
    flow[...] = (bu, bv)
    flow[y0:y0 + square, x0:x0 + square] = (su, sv)
    return render(0), render(1), flow
