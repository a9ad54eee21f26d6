"""The fills a user would otherwise use to densify a few motion vectors, each behind CMP's
`propagate(image, points, vectors) -> flow` (docs/design.md §8), so the benchmark scores them
exactly as it scores a model.

Every method takes image uint8 [H, W, 3] RGB, points [K, 2] (x, y) pixel coordinates rounded
to the nearest pixel, vectors [K, 2] (u, v) pixels, and returns flow float32 [H, W, 2].
Guides that round to the same pixel: the later one wins, in every method (as in
`sampling.sparse_from_points`).
"""
import cv2
import numpy as np
from matplotlib import tri

from cmp_tf.data import sampling

# nearest: OpenCV labels pixels only with its chamfer masks (not with DIST_MASK_PRECISE); the
# 5x5 one is the closest to Euclidean.
_DISTANCE_MASK = cv2.DIST_MASK_5
# gaussian: sigma as a fraction of the image side sqrt(H * W). Drag-style video generators
# blur their sparse drags with fixed kernels: sigma 10 px (99 px wide) on 256^2 to 320x576
# frames (MotionCtrl, DragNUWA), sigma 20 px (199 px) on 576 px pose-driven frames, i.e.
# 0.02-0.04 of the side. 0.04 is their 256^2 reach, kept at any resolution so the baseline
# does not change character with the benchmark's image size.
GAUSSIAN_SIGMA_FRACTION = 0.04
# ... the kernel reaches this many sigmas, as theirs do (99 px at sigma 10) ...
GAUSSIAN_RADIUS = 5.0
# ... and eps is this fraction of one lone guide's centre weight: the fill keeps 99.9 % of a
# guide's vector on it, half at 3.7 sigma, 0.4 % at the kernel's edge, then exactly zero.
GAUSSIAN_EPS = 1e-3
# edge_aware: the fill inside cmp_tf's models, with the options of its recipes
# (configs/propagation_edges.py): on 2 x 2 cells, bilinearly upsampled, as the models use it.
EDGE_STRIDE, EDGE_SIGMA, EDGE_RELAX, EDGE_FINEST_RELAX = 2, 0.1, 4, 0
# local_affine: the Gaussian weights' sigma as a fraction of the guides' mean spacing
# sqrt(H * W / K). Measured on carphone (docs/results.md): 0.35 is better from 10 to 100
# uniform guides but falls behind where watershed guides cluster (w400 0.150 against linear's
# 0.114); 0.7 loses from 10 to 100 guides; 0.5 is never behind linear interpolation from 10 on.
LOCAL_AFFINE_SIGMA_FRACTION = 0.5
# ... the kernel reaches this many sigmas ...
LOCAL_AFFINE_RADIUS = 4.0
# ... the slopes' ridge, as a fraction of the largest weight mass in the image: keeps the fit
# defined where the guides nearby lie on a line, and shrinks it toward the guides' weighted
# mean where they are few and far (a ridge relative to each pixel's own mass extrapolated
# there: carphone u25 0.325 against 0.300) ...
LOCAL_AFFINE_RIDGE = 1e-2
# ... and pixels whose weight mass is below this fraction of the largest take the nearest
# guide's vector (beyond the kernel's reach from every guide there is nothing to fit).
LOCAL_AFFINE_MIN_WEIGHT = 1e-6
# epicflow: fewer distinct guides than this crash OpenCV or give zeros (see `epicflow`) ...
EPIC_MIN_GUIDES = 3
# ... and this zoom (px of motion per px from the centre) keeps its inlier threshold above
# float32 rounding of pixel coordinates (6e-8 of them) up to 4K images, while it changes
# results by about 1e-5 of the image diagonal where sparse guides let the fits shrink it.
# Measured on moving squares (256^2, 10000 guides): EPE 0.45 px without it, 0.05 with it.
EPIC_ZOOM = 1e-5


def _pixels(points, vectors, width):
    """Guides as distinct pixels: xy int64 [N, 2] and their vectors; the later guide wins."""
    xy = np.round(points).astype(np.int64)
    flat = xy[:, 1] * width + xy[:, 0]
    _, last = np.unique(flat[::-1], return_index=True)  # first hit from the end = last guide
    keep = np.sort(len(flat) - 1 - last)
    return xy[keep], vectors[keep]


def _check_sigma(sigma):
    """A Gaussian's standard deviation given by the caller: a positive number of pixels."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.number)) \
            or not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a positive number of pixels; got {sigma!r}.")


def _nearest_fill(xy, vectors, height, width):
    """[H, W, 2]: every pixel takes the vector of its nearest guide pixel (chamfer 5x5)."""
    seeds = np.ones((height, width), np.uint8)
    seeds[xy[:, 1], xy[:, 0]] = 0  # distances are measured to the zero pixels
    _, labels = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, _DISTANCE_MASK,
                                                labelType=cv2.DIST_LABEL_PIXEL)
    guide_of_label = np.zeros(int(labels.max()) + 1, np.int64)
    guide_of_label[labels[xy[:, 1], xy[:, 0]]] = np.arange(len(xy))
    return vectors[guide_of_label[labels]]


def zero(image, points, vectors):
    """No motion anywhere: the floor every method must beat."""
    image, _, _ = sampling.check_guidance(image, points, vectors)
    return np.zeros(image.shape[:2] + (2,), np.float32)


def nearest(image, points, vectors):
    """Each pixel moves as its nearest guide (Euclidean, up to OpenCV's 5x5 chamfer mask):
    piecewise-constant motion over the guides' Voronoi cells, the dense prior CMP can start from.

    Where two guides are almost equally near, a pixel may take either: measured on random
    guides, about 1 % of pixels take one at most 3.4 % (and 0.63 px) farther than the nearest.
    """
    image, points, vectors = sampling.check_guidance(image, points, vectors)
    height, width = image.shape[:2]
    xy, vectors = _pixels(points, vectors, width)
    return _nearest_fill(xy, vectors, height, width)


def _collinear(xy):
    """True when every point lies on one line (exact: integer cross products)."""
    d = xy[1:] - xy[0]  # distinct points, so d[0] != 0
    return not np.any(d[0, 0] * d[:, 1] - d[0, 1] * d[:, 0])


def linear(image, points, vectors):
    """Linear interpolation over the Delaunay triangulation of the guides: smooth motion
    between guides, exact on affine motion; nearest fill outside their convex hull.

    With fewer than 3 distinct guide pixels, or all of them on one line, there is no triangle:
    the result is the nearest fill.
    """
    image, points, vectors = sampling.check_guidance(image, points, vectors)
    height, width = image.shape[:2]
    xy, vectors = _pixels(points, vectors, width)
    flow = _nearest_fill(xy, vectors, height, width)
    if len(xy) < 3 or _collinear(xy):
        return flow
    mesh = tri.Triangulation(xy[:, 0].astype(np.float64), xy[:, 1].astype(np.float64))
    finder = mesh.get_trifinder()
    rows, cols = np.mgrid[:height, :width].astype(np.float64)
    inside = finder(cols, rows) >= 0  # [H, W]: pixels in the convex hull (edges included)
    for channel in range(2):
        values = tri.LinearTriInterpolator(mesh, vectors[:, channel].astype(np.float64),
                                           trifinder=finder)(cols[inside], rows[inside])
        flow[..., channel][inside] = np.ma.getdata(values)
    return flow


def gaussian(image, points, vectors, sigma=None):
    """Normalized Gaussian splatting, the densification drag-style video generators use:
    flow = G * (mask v) / (G * mask + eps). Each guide's vector spreads over about
    3.7 sigma, overlapping guides average, and motion falls to zero far from every guide.

    Args:
        sigma: Gaussian standard deviation in pixels; None uses GAUSSIAN_SIGMA_FRACTION of
            sqrt(H * W).
    """
    image, points, vectors = sampling.check_guidance(image, points, vectors)
    height, width = image.shape[:2]
    if sigma is None:
        sigma = GAUSSIAN_SIGMA_FRACTION * np.sqrt(height * width)
    else:
        _check_sigma(sigma)
    xy, vectors = _pixels(points, vectors, width)
    splat = np.zeros((height, width, 3), np.float32)  # (u m, v m, m)
    splat[xy[:, 1], xy[:, 0], :2] = vectors
    splat[xy[:, 1], xy[:, 0], 2] = 1.0
    # A kernel wider than the image adds nothing but time.
    radius = min(int(np.ceil(GAUSSIAN_RADIUS * sigma)), max(height, width))
    size = 2 * radius + 1
    # Zeros beyond the border: no guidance outside the image (reflection would invent some).
    blurred = cv2.GaussianBlur(splat, (size, size), sigma, borderType=cv2.BORDER_CONSTANT)
    peak = float(cv2.getGaussianKernel(size, sigma, cv2.CV_64F).max()) ** 2
    return blurred[..., :2] / (blurred[..., 2:] + np.float32(GAUSSIAN_EPS * peak))


def local_affine(image, points, vectors, sigma=None):
    """Moving least squares: at every pixel, the affine motion that best fits the guides
    under Gaussian weights of their distance to it (normalized convolution of order 1; Knutsson
    & Westin, 1993), read at the pixel. Smooth, affine motion kept where guides are dense
    (a small ridge on the slopes, LOCAL_AFFINE_RIDGE, leans the fit toward the guides' weighted
    mean where they are few), and unlike linear interpolation it averages several guides'
    noise. No triangulation: Gaussian blurs of 12 moment images and a 3 x 3 solve per pixel.

    Args:
        sigma: Gaussian standard deviation in pixels; None uses LOCAL_AFFINE_SIGMA_FRACTION of
            the guides' mean spacing sqrt(H * W / K).
    With fewer than 3 distinct guide pixels there is no affine fit: the result is the nearest
    fill.
    """
    image, points, vectors = sampling.check_guidance(image, points, vectors)
    height, width = image.shape[:2]
    xy, vectors = _pixels(points, vectors, width)
    if len(xy) < 3:
        return _nearest_fill(xy, vectors, height, width)
    if sigma is None:
        sigma = LOCAL_AFFINE_SIGMA_FRACTION * np.sqrt(height * width / len(xy))
    else:
        _check_sigma(sigma)
    # Moments of the guides in units of sigma (well conditioned at any scale), float64.
    gx, gy = xy[:, 0] / sigma, xy[:, 1] / sigma
    per_guide = [np.ones_like(gx), gx, gy, gx * gx, gx * gy, gy * gy]
    for c in range(2):
        u = vectors[:, c].astype(np.float64)
        per_guide += [u, u * gx, u * gy]
    moments = np.zeros((height, width, len(per_guide)), np.float64)
    moments[xy[:, 1], xy[:, 0]] = np.stack(per_guide, -1)
    radius = min(int(np.ceil(LOCAL_AFFINE_RADIUS * sigma)), max(height, width))
    size = 2 * radius + 1
    sums = np.stack([cv2.GaussianBlur(moments[..., i], (size, size), sigma,
                                      borderType=cv2.BORDER_CONSTANT)
                     for i in range(moments.shape[-1])], -1)
    s0, sx, sy, sxx, sxy, syy = np.moveaxis(sums[..., :6], -1, 0)
    py, px = np.mgrid[:height, :width] / sigma
    # Moments about the pixel: sum w (x_i - p)^a (y_i - p)^b from the absolute ones.
    mx, my = sx - px * s0, sy - py * s0
    mxx = sxx - 2 * px * sx + px * px * s0
    mxy = sxy - px * sy - py * sx + px * py * s0
    myy = syy - 2 * py * sy + py * py * s0
    ridge = LOCAL_AFFINE_RIDGE * s0.max()
    normal = np.stack([np.stack([s0, mx, my], -1), np.stack([mx, mxx + ridge, mxy], -1),
                       np.stack([my, mxy, myy + ridge], -1)], -2)
    weak = s0 < LOCAL_AFFINE_MIN_WEIGHT * s0.max()
    normal[weak] = np.eye(3)
    flow = np.empty((height, width, 2), np.float32)
    for c in range(2):
        su, sux, suy = np.moveaxis(sums[..., 6 + 3 * c:9 + 3 * c], -1, 0)
        rhs = np.stack([su, sux - px * su, suy - py * su], -1)
        flow[..., c] = np.linalg.solve(normal, rhs[..., None])[..., 0, 0]
    if weak.any():
        flow[weak] = _nearest_fill(xy, vectors, height, width)[weak]
    return flow


def epicflow(image, points, vectors):
    """EpicFlow's edge-aware interpolation (Revaud et al., CVPR 2015; OpenCV's
    EdgeAwareInterpolator): each pixel takes a locally affine motion fitted (RANSAC, then
    weighted least squares) to the guides nearest to it along the image, so motion stops at
    object edges. Matches are guide pixel -> guide pixel + vector; its K nearest guides are
    min(128, number of guides).

    What OpenCV does with few guides, measured (opencv-contrib 5.0.0): 1 guide crashes the
    process (segmentation fault), 2 give an all-zero field, 3 or more give affine fits (3
    guides on one line: their mean vector everywhere). So with fewer than EPIC_MIN_GUIDES
    distinct guide pixels the result is the nearest fill: for 1 guide its vector everywhere,
    for 2 each pixel takes the nearer one's. With tens of guides on a large image the fits
    extrapolate and can be far worse than the nearest fill; that is EpicFlow's answer, kept.

    Guards against OpenCV's degenerate case: its inlier threshold is half the spread of the
    neighbours' vectors, so identical vectors leave no inlier and the fit collapses to zero
    motion. One translation everywhere is returned as it is. Otherwise the mean vector is
    taken out before and added back after (the fits are equivariant to a translation), and a
    tiny zoom of EPIC_ZOOM px per px is added to every match and removed after (through the
    same smoothing): affine fits carry it, and it keeps the spread of a rigid region denser
    than K guides above float rounding. A non-finite field falls back to the nearest fill.
    """
    image, points, vectors = sampling.check_guidance(image, points, vectors)
    height, width = image.shape[:2]
    xy, vectors = _pixels(points, vectors, width)
    fill = _nearest_fill(xy, vectors, height, width)
    if len(xy) < EPIC_MIN_GUIDES or (vectors == vectors[0]).all():
        return fill
    interpolator = cv2.ximgproc.createEdgeAwareInterpolator()
    # Its default K = 128 with fewer guides reads past the matches (measured: flows of -500 px).
    interpolator.setK(min(interpolator.getK(), len(xy)))
    mean = vectors.mean(0, dtype=np.float64).astype(np.float32)
    rows, cols = np.mgrid[:height, :width].astype(np.float32)
    zoom = EPIC_ZOOM * np.stack([cols - (width - 1) / 2, rows - (height - 1) / 2], -1)
    from_points = xy.astype(np.float32)
    to_points = from_points + (vectors - mean) + zoom[xy[:, 1], xy[:, 0]]
    flow = interpolator.interpolate(image, from_points, image, to_points)
    if interpolator.getUsePostProcessing():  # the same smoothing of the zoom, to remove it
        zoom = cv2.ximgproc.fastGlobalSmootherFilter(
                image, zoom, interpolator.getFGSLambda(), interpolator.getFGSSigma())
    flow = flow - zoom + mean
    if not np.isfinite(flow).all():
        return fill
    return flow.astype(np.float32, copy=False)


_edge_aware_fill = None  # the TensorFlow function, made on first use


def edge_aware(image, points, vectors):
    """cmp_tf's edge-aware pull-push fill alone, with no network (models.fills.EdgeAwareFill):
    a pull-push whose push and relaxation weigh cells by how close their colours are, so a
    guide's motion spreads over its region and stops where the colour changes. Computed on
    EDGE_STRIDE x EDGE_STRIDE cells and bilinearly upsampled, as inside the models, then each
    guided pixel takes its guide's vector; the image is padded by repeating its border to a
    multiple of the cell size. Needs TensorFlow.
    """
    global _edge_aware_fill
    image, points, vectors = sampling.check_guidance(image, points, vectors)
    height, width = image.shape[:2]
    xy, vectors = _pixels(points, vectors, width)
    if _edge_aware_fill is None:
        import tensorflow as tf

        from cmp_tf.models import fills

        layer = fills.EdgeAwareFill(EDGE_STRIDE, sigma=EDGE_SIGMA, relax=EDGE_RELAX,
                                    finest_relax=EDGE_FINEST_RELAX)

        def fill(sparse, colour):
            cells = layer([sparse, colour])
            return tf.image.resize(cells, tf.shape(sparse)[1:3], "bilinear")

        _edge_aware_fill = tf.function(fill, reduce_retracing=True)
    pad = [(0, -height % EDGE_STRIDE), (0, -width % EDGE_STRIDE)]
    sparse = np.zeros((height, width, 3), np.float32)
    sparse[xy[:, 1], xy[:, 0], :2] = vectors
    sparse[xy[:, 1], xy[:, 0], 2] = 1.0
    sparse = np.pad(sparse, pad + [(0, 0)])
    colour = np.pad(image, pad + [(0, 0)], mode="edge").astype(np.float32)
    flow = np.array(_edge_aware_fill(sparse[None], colour[None])[0, :height, :width], np.float32)
    flow[xy[:, 1], xy[:, 0]] = vectors
    return flow


BASELINES = {"zero": zero, "nearest": nearest, "linear": linear, "gaussian": gaussian,
             "epicflow": epicflow, "edge_aware": edge_aware, "local_affine": local_affine}


def get(name):
    """The baseline called `name`, as evaluate.py's --baselines picks it."""
    if name not in BASELINES:
        raise ValueError(f"Unknown baseline {name!r}; known: {', '.join(BASELINES)}.")
    return BASELINES[name]
