"""Layered scenes: the flow is exactly the top-most layer's affine motion at every pixel."""
import numpy as np
import pytest

from cmp_tf.data import layered


def _affine_fit_residual(flow, mask):
    """Largest error of the least-squares affine fit of `flow` over the pixels in `mask`."""
    ys, xs = np.nonzero(mask)
    design = np.stack([xs, ys, np.ones_like(xs)], 1).astype(np.float64)
    target = flow[ys, xs].astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    return np.abs(design @ coef - target).max()


def test_a_background_alone_moves_by_one_affine_motion():
    image, flow, valid = layered.render_scene(np.random.default_rng(0), 48, 64, layers=(0, 0),
                                              background=1.0)
    assert image.shape == (48, 64, 3) and flow.shape == (48, 64, 2) and valid.min() == 1
    assert image.dtype == flow.dtype == np.float32 and 0 <= image.min() <= image.max() <= 255
    assert np.abs(flow).max() > 0.1
    assert _affine_fit_residual(flow, np.ones((48, 64), bool)) < 1e-4


def test_each_layer_region_moves_by_its_own_affine_motion():
    """With a still background, the moving pixels split into regions of single affine
    motions: the distinct motions, found by fitting, explain every pixel exactly."""
    rng = np.random.default_rng(3)
    image, flow, _ = layered.render_scene(rng, 64, 64, layers=(3, 3), background=0.0,
                                          translation=10.0)
    moving = np.abs(flow).sum(-1) > 0
    assert 0.05 < moving.mean() < 0.95  # layers and still background both visible
    # Pixels with the same motion as their right neighbour lie inside one layer: the flow
    # changes only at layer edges, so the flow's second differences vanish inside layers.
    second = np.abs(flow[:, 2:] - 2 * flow[:, 1:-1] + flow[:, :-2]).max(-1)
    assert np.mean(second < 1e-4) > 0.9


def test_same_generator_state_same_scene_and_textures_from_a_frame():
    source = np.random.default_rng(1).uniform(0, 255, (40, 50, 3)).astype(np.float32)
    a = layered.render_scene(np.random.default_rng(5), 32, 32, source=source)
    b = layered.render_scene(np.random.default_rng(5), 32, 32, source=source)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    other = layered.render_scene(np.random.default_rng(6), 32, 32, source=source)
    assert not np.array_equal(a[1], other[1])


@pytest.mark.parametrize("field,value,match", [
    ("ratio", 1.5, "ratio must be in"),
    ("layers", (3, 1), "layers must be"),
    ("zoom", -0.1, "zoom must be >= 0"),
    ("zoom", 1.0, "zoom must be >= 0 and below 1; got 1.0"),  # a layer shrunk to nothing
    ("translation", float("inf"), "translation must be a finite number >= 0 and at most 128"),
    ("translation", 1e30, "translation must be .* at most 128"),  # hung OpenCV's warp
    ("rotation_degrees", float("nan"), "rotation_degrees must be a finite number"),
    ("background", float("inf"), "background must be a finite number >= 0; got inf"),
    ("noise_textures", 2.0, "noise_textures must be in"),
    ("texture", 1, r"Unknown config.data.layered fields \['texture'\]"),
])
def test_bad_fields_are_named(field, value, match):
    with pytest.raises(ValueError, match=match):
        layered.check_layered_config({field: value})


def test_a_source_that_is_not_an_rgb_frame_is_refused():
    with pytest.raises(ValueError, match="source must be an RGB frame"):
        layered.render_scene(np.random.default_rng(0), 16, 16, source=np.zeros((16, 16)))


def test_layer_masks_are_disjoint_visible_parts_each_with_one_affine_motion():
    """return_masks draws the same scene and gives where each layer shows: each mask's flow
    is one affine motion, masks do not overlap, and outside them the background shows."""
    plain = layered.render_scene(np.random.default_rng(5), 64, 64, layers=(3, 3))
    image, flow, _, masks = layered.render_scene(np.random.default_rng(5), 64, 64,
                                                 layers=(3, 3), return_masks=True)
    np.testing.assert_array_equal(image, plain[0])
    np.testing.assert_array_equal(flow, plain[1])
    assert masks.shape == (3, 64, 64) and masks.dtype == bool
    assert masks.sum(0).max() <= 1  # an upper layer hides what it covers below
    for mask in masks:
        if mask.sum() >= 3:
            assert _affine_fit_residual(flow, mask) < 1e-3
    background = ~masks.any(0)
    assert _affine_fit_residual(flow, background) < 1e-3


def test_default_scenes_are_those_of_earlier_versions():
    """New options off by default draw no random numbers: sums of scenes rendered before."""
    source = np.random.default_rng(1).uniform(0, 255, (40, 50, 3)).astype(np.float32)
    for frame, image_sum, flow_sum in ((None, 1776483.921147585, -102.41943676999017),
                                       (source, 1171185.5056050122, -25.778045782935806)):
        image, flow, _ = layered.render_scene(np.random.default_rng(7), 48, 64, source=frame)
        np.testing.assert_allclose(image.astype(np.float64).sum(), image_sum, rtol=1e-6)
        np.testing.assert_allclose(flow.astype(np.float64).sum(), flow_sum, rtol=1e-6)


def _one_layer(seed, **params):
    return layered.render_scene(np.random.default_rng(seed), 24, 24, layers=(1, 1),
                                return_masks=True, **params)


def test_an_inner_edge_splits_a_layer_into_two_textures_with_one_motion():
    for seed in range(20):
        plain, split = _one_layer(seed), _one_layer(seed, inner_edges=1.0)
        mask = plain[3][0]
        if 0.2 < mask.mean() < 0.8:
            break
    np.testing.assert_array_equal(split[1], plain[1])  # the same motion everywhere
    np.testing.assert_array_equal(split[0][~mask], plain[0][~mask])
    changed = np.any(split[0] != plain[0], -1)[mask].mean()
    assert 0.05 < changed < 0.95  # one side of the line has a new texture


def test_a_shared_texture_is_the_texture_below_shifted():
    for seed in range(20):
        image, flow, _, masks = _one_layer(seed, shared_texture=1.0, background=0.0)
        mask = masks[0]
        if 0.2 < mask.mean() < 0.6 and np.abs(flow[mask]).max() > 0.5:
            break
    plain = _one_layer(seed, background=0.0)
    np.testing.assert_array_equal(flow, plain[1])  # a motion boundary all the same
    best = 0.0
    for dy in range(24):  # some shift of the background shows through the layer exactly
        for dx in range(24):
            source = np.roll(image, (dy, dx), axis=(0, 1))
            comparable = mask & np.roll(~mask, (dy, dx), axis=(0, 1))
            if comparable.sum() > 10:
                best = max(best, np.all(source[comparable] == image[comparable], -1).mean())
    assert best == 1.0


def test_shared_textures_and_inner_edges_render_over_several_layers():
    """Each layer may wear the texture of the one below (a colour image, never a mask)."""
    source = np.random.default_rng(1).uniform(0, 255, (40, 50, 3)).astype(np.float32)
    for seed in range(8):
        image, flow, valid, masks = layered.render_scene(
            np.random.default_rng(seed), 32, 40, source=source, return_masks=True,
            layers=(3, 5), shared_texture=1.0, inner_edges=0.5)
        assert image.shape == (32, 40, 3) and flow.shape == (32, 40, 2) and len(masks) >= 3
        assert np.isfinite(image).all() and np.isfinite(flow).all()


@pytest.mark.parametrize("field", ["shared_texture", "inner_edges"])
def test_edge_options_are_chances(field):
    with pytest.raises(ValueError, match=rf"config.data.layered.{field} must be in \[0, 1\]"):
        layered.check_layered_config({field: 1.5})


def test_the_second_frame_is_the_first_moved_by_the_exact_flow():
    from cmp_tf.data import sampling
    from cmp_tf.data.teacher import photometric_error

    for seed, layers in ((0, (0, 0)), (1, (3, 3)), (2, (3, 3))):
        first, flow, valid, masks = layered.render_scene(np.random.default_rng(seed), 64, 64,
                                                     layers=layers, return_masks=True)
        *same, second = layered.render_scene(np.random.default_rng(seed), 64, 64, layers=layers,
                                             return_masks=True, second_frame=True)
        for a, b in zip((first, flow, valid, masks), same):
            np.testing.assert_array_equal(a, b)  # the same scene either way
        weight = np.zeros((64, 64), np.float32)
        weight[8:-8, 8:-8] = 1.0  # inside the frame after the move
        if layers[1]:  # away from the motion boundaries, where the second frame hides pixels
            weight *= sampling.distance_to_motion_edges(flow) > 5
        moved = photometric_error(first, second, flow, weight)
        still = photometric_error(first, second, np.zeros_like(flow), weight)
        assert moved < 2.5 < still, (seed, moved, still)  # grey levels (0..255)

