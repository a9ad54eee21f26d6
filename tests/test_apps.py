"""The applications (cmp_tf.apps): guided animation, click annotation, their input checks,
and both commands from an exported file."""
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from cmp_tf import flow as flow_lib
from cmp_tf.apps import animate
from cmp_tf.apps import annotate
from cmp_tf.apps import inputs
from tests.helpers import serving

SIZE = 128  # the shipped model's smallest side: every test image is this small


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The shipped model exported once to TFLite float32 at 128²."""
    from cmp_tf import rundir
    from export import export_lib

    # Named, not the default: that is the user's newest run under runs/, when there is one.
    model, config, path = export_lib.load_checkpoint(rundir.PRETRAINED)
    out = tmp_path_factory.mktemp("tflite")
    export_lib.export(model, config, str(out), formats=("tflite",), size=(SIZE, SIZE),
                      parity_samples=1, repeats=1, encoder=False, source=path,
                      log=lambda _: None)
    return out


def _square_scene(seed=0, square=(40, 40, 48)):
    """A red square (x0, y0, side) on a textured grey-blue background: (image, mask)."""
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.uniform(0, 255, (SIZE, SIZE, 3)).astype(np.float32), (0, 0), 2)
    image = (image * 0.4 + np.array([60, 90, 140])).clip(0, 255).astype(np.uint8)
    x0, y0, side = square
    mask = np.zeros((SIZE, SIZE), bool)
    mask[y0:y0 + side, x0:x0 + side] = True
    image[mask] = (220, 30, 30)
    return image, mask


def _iou(a, b):
    return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()


# --- animation: the warp -----------------------------------------------------------------------

def test_a_moving_square_lands_whole_and_the_strip_it_reveals_shows_background():
    image, mask = _square_scene()
    flow = np.zeros((SIZE, SIZE, 2), np.float32)
    flow[mask] = (10, 0)  # the square moves 10 px right over a still background
    frames = animate.animate_frames(image, flow, frames=5)
    assert len(frames) == 5 and all(f.shape == image.shape and f.dtype == np.uint8
                                    for f in frames)
    np.testing.assert_array_equal(frames[0], image)
    red = np.all(frames[-1] == (220, 30, 30), axis=-1)
    moved = np.roll(mask, 10, axis=1)
    assert red[moved].all() and not red[~moved].any()  # whole, and no copy left behind
    # The revealed strip x in [40, 50) shows the background just left of the square's old place.
    np.testing.assert_allclose(frames[-1][40:88, 40:50], image[40:88, 30:40], atol=1)
    half = np.all(frames[2] == (220, 30, 30), axis=-1)
    assert half[np.roll(mask, 5, axis=1)].all() and half.sum() == mask.sum()


def test_a_square_moving_by_fractions_of_a_pixel_stays_whole_at_every_frame():
    """Each pixel splatted to one target by rounding (halves to even) put two neighbours on
    one pixel and none on the next: a comb of background through the square at t = 0.75."""
    image, mask = _square_scene()
    flow = np.zeros((SIZE, SIZE, 2), np.float32)
    flow[mask] = (10, 3)
    frames = animate.animate_frames(image, flow, frames=9)  # t in steps of 1.25 x 0.375 px
    rows, cols = np.nonzero(mask)
    for t, frame in zip(np.linspace(0, 1, 9), frames):
        # every pixel the moved square covers wholly is the square's colour
        top, left = rows.min() + 3 * t, cols.min() + 10 * t
        bottom, right = rows.max() + 3 * t, cols.max() + 10 * t
        inside = frame[int(np.ceil(top)):int(np.floor(bottom)) + 1,
                       int(np.ceil(left)):int(np.floor(right)) + 1]
        assert np.all(inside == (220, 30, 30)), t


def test_a_frame_where_every_pixel_moves_out_repeats_the_border():
    """Nothing landing in the frame left the splat's winners empty: an IndexError."""
    image = np.arange(18, dtype=np.uint8).reshape(1, 6, 3) * 10
    flow = np.zeros((1, 6, 2), np.float32)
    flow[..., 1] = 1.0  # one row, moving down out of it
    frames = animate.animate_frames(image, flow, frames=2)
    np.testing.assert_array_equal(frames[-1], image)  # its own motion, clamped to the row


def test_larger_motion_occludes_smaller_where_both_land():
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[60:70, 20:30] = (0, 255, 0)  # fast green square, moving 30 px right
    image[60:70, 50:60] = (0, 0, 255)  # slow blue square, moving 2 px right
    flow = np.zeros((SIZE, SIZE, 2), np.float32)
    flow[60:70, 20:30] = (30, 0)
    flow[60:70, 50:60] = (2, 0)
    last = animate.animate_frames(image, flow, frames=2)[-1]
    np.testing.assert_array_equal(last[60:70, 50:60], np.full((10, 10, 3), (0, 255, 0)))
    np.testing.assert_array_equal(last[60:70, 60:62], np.full((10, 2, 3), (0, 0, 255)))


def test_a_subpixel_translation_is_a_smooth_shift_and_the_border_repeats():
    ramp = np.tile(np.arange(SIZE, dtype=np.float32)[None, :, None], (SIZE, 1, 3))
    image = ramp.astype(np.uint8)
    flow = np.zeros((SIZE, SIZE, 2), np.float32)
    flow[..., 0] = 5.0
    frames = animate.animate_frames(image, flow, frames=3)
    # t = 0.5: a 2.5 px shift right, so pixel x shows the ramp's value x - 2.5.
    np.testing.assert_allclose(frames[1][:, 10:-10, 0], ramp[:, 10:-10, 0] - 2.5, atol=0.51)
    assert frames[2][:, :5].min() == 0 == frames[2][:, 0].max()  # edge repeated, not black


def test_animation_rejects_bad_sizes_and_counts():
    image, _ = _square_scene()
    with pytest.raises(ValueError, match="frames must be an integer >= 2"):
        animate.animate_frames(image, np.zeros((SIZE, SIZE, 2), np.float32), frames=1)
    with pytest.raises(ValueError, match="flow must be"):
        animate.animate_frames(image, np.zeros((SIZE, 64, 2), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        animate.animate_frames(image.astype(np.float32), np.zeros((SIZE, SIZE, 2), np.float32))


@pytest.mark.parametrize("fps", [8, 15, 50, 0.5])
def test_a_gif_lasts_frames_over_fps_in_whole_hundredths(fps):
    """Pillow truncated the one delay 1000 / fps to hundredths: 8 fps played at 8.33, 15 at
    16.7, and anything over 50 at 10 in a browser (a delay of one hundredth shows as ten)."""
    from PIL import Image
    import io

    frames = [np.full((8, 8, 3), 20 * index, np.uint8) for index in range(12)]
    gif = Image.open(io.BytesIO(animate.encode_gif(frames, fps)))
    delays = []
    for index in range(gif.n_frames):
        gif.seek(index)
        delays.append(gif.info["duration"])
    assert len(delays) == 12 and all(d % 10 == 0 and d >= 20 for d in delays), delays
    assert abs(sum(delays) - 12 * 1000 / fps) <= 5, delays  # within half a hundredth
    assert max(delays) - min(delays) <= 10


@pytest.mark.parametrize("fps", [51, 100])
def test_a_gif_faster_than_browsers_play_is_refused_naming_mp4(fps, tmp_path):
    frames = [np.zeros((8, 8, 3), np.uint8)] * 2
    with pytest.raises(ValueError, match=rf"--fps={fps}: a GIF plays at most 50 frames per "
                                         r"second .* write an \.mp4 for more"):
        animate.write_animation(str(tmp_path / "a.gif"), frames, fps=fps)
    animate.write_animation(str(tmp_path / "a.mp4"), frames, fps=fps)


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_animations_are_written_with_every_frame(tmp_path, suffix):
    image, mask = _square_scene()
    flow = np.zeros((SIZE, SIZE, 2), np.float32)
    flow[mask] = (6, -4)
    frames = animate.animate_frames(image, flow, frames=6)
    path = animate.write_animation(str(tmp_path / f"a{suffix}"), frames, fps=8)
    if suffix == ".gif":
        import imageio.v3 as iio

        back = iio.imread(path)
        assert back.shape == (6, SIZE, SIZE, 3)
        assert np.abs(back[-1].astype(int) - frames[-1]).mean() < 8  # a 256-colour palette
    else:
        capture, count = cv2.VideoCapture(path), 0
        while capture.read()[0]:
            count += 1
        assert count == 6
    with pytest.raises(ValueError, match="--out=.*must end in one of .gif, .mp4"):
        animate.write_animation(str(tmp_path / "a.avi"), frames, fps=8)
    # Frames it cannot write are named before anything is written: the file already there
    # stays whole (a GIF was emptied first, an MP4 cut to a header).
    before = open(path, "rb").read()
    for bad, message in [([], "frames is empty"),
                         ([f.astype(np.float32) for f in frames], "frames item 1 must be a uint8"),
                         ([f[..., 0] for f in frames], r"item 1 .*; got uint8 \(128, 128\)"),
                         ([frames[0], frames[1][:64]], r"frames item 2 must be a uint8 \[H, W, "
                                                       r"3\] RGB image of the first one's")]:
        with pytest.raises(ValueError, match=message):
            animate.write_animation(path, bad, fps=8)
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == [f"a{suffix}"]  # no partial file left


@pytest.mark.parametrize("height, width", [(143, 175), (1, 6)])
def test_an_mp4_of_an_odd_sized_image_keeps_every_pixel(tmp_path, height, width):
    """MPEG-4 codes 2 x 2 chroma blocks: the frames were cut by a pixel (and one row failed)."""
    frames = [np.full((height, width, 3), 40 * i, np.uint8) for i in range(3)]
    path = animate.write_animation(str(tmp_path / "a.mp4"), frames, fps=8)
    capture = cv2.VideoCapture(path)
    ok, frame = capture.read()
    assert ok and frame.shape[:2] == (height + height % 2, width + width % 2)


# --- input checks shared by the apps -----------------------------------------------------------

@pytest.mark.parametrize("text, match", [
    ("1,2,3", r"--arrows item 1 '1,2,3' must be 4 finite numbers x,y,u,v"),
    ("1,2,3,4;5,6,nan,1", r"--arrows item 2 '5,6,nan,1'"),
    ("1,2,a,4", r"--arrows item 1"),
    ("", r"--arrows needs at least one item 'x,y,u,v'"),
    (None, r"--arrows needs at least one item"),
    ("10,10,2e6,0", r"--arrows item 1 '10,10,2e6,0': each number must be at most 1e\+06"),
    ([[88, True, 50, -10, 4]], r"--arrows item 1 .* must be 4 finite numbers"),  # JSON's true
    ([[10, "10", 3, 0]], r"--arrows item 1 \[10, '10', 3, 0\] must be 4 finite numbers"),
    ([[1, 2, 3, "1_0"]], r"--arrows item 1 .* must be 4 finite numbers"),  # JSON text, not 10
    ("4_5,45,1_0,0", r"--arrows item 1 '4_5,45,1_0,0' must be 4 finite numbers"),  # not 45
    ([[1, 2, 3, 4]] * 5, r"--arrows holds 5 items; at most 4 are accepted"),
    ([[1, 2, 3, 10**400]], r"--arrows item 1 .* must be 4 finite numbers"),
    ([[0] * 10000], r"--arrows item 1 \[0, 0, .*\.\.\. must be"),  # the item cut in the error
])
def test_bad_arrows_are_named_with_the_flag_and_the_item(text, match):
    with pytest.raises(ValueError, match=match) as raised:
        inputs.parse_rows(text, inputs.ARROW_FIELDS, "--arrows", max_items=4)
    assert len(str(raised.value)) < 200


def test_arrow_and_click_strings_parse_and_pins_are_allowed():
    rows = inputs.parse_rows(" 10,20,3,-4 ; 5,6,0,0;", inputs.ARROW_FIELDS, "--arrows")
    np.testing.assert_array_equal(rows, [[10, 20, 3, -4], [5, 6, 0, 0]])
    assert inputs.parse_rows([[1, 2], [3, 4]], inputs.CLICK_FIELDS, "positive").shape == (2, 2)
    rows = inputs.parse_rows([np.array([1.5, 2], np.float32), (np.int64(3), 4.0)],
                             inputs.CLICK_FIELDS, "positive")  # NumPy's numbers are numbers
    np.testing.assert_array_equal(rows, [[1.5, 2], [3, 4]])
    assert inputs.parse_rows("", inputs.CLICK_FIELDS, "--negative", allow_empty=True).shape == \
        (0, 2)
    with pytest.raises(ValueError, match=r"--positive item 1 \(x=128, y=3\) lies outside the "
                                         r"128x128 image"):
        inputs.check_inside(np.array([[127.6, 3]]), SIZE, SIZE, "--positive")


def test_unreadable_images_and_oversized_uploads_are_refused(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=r"--image=.*notes.png could not be read as an image"):
        inputs.read_image(str(text))
    with pytest.raises(ValueError, match=r"--image=.*missing.png does not exist"):
        inputs.read_image(str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match="image could not be decoded"):
        inputs.decode_image(b"\x89PNG broken")
    png = cv2.imencode(".png", np.zeros((40, 300, 3), np.uint8))[1].tobytes()
    with pytest.raises(ValueError, match="300x40 px; at most 256"):
        inputs.decode_image(png, max_side=256)
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.full((8, 9), 7, np.uint8))
    assert inputs.read_image(str(grey)).shape == (8, 9, 3)
    # A JPEG cut short decodes in OpenCV, its missing part grey, with a warning alone.
    jpeg = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3),
                                                                  dtype=np.uint8))[1].tobytes()
    (tmp_path / "cut.jpg").write_bytes(jpeg[:len(jpeg) // 3])
    with pytest.raises(ValueError, match=r"--image=.*cut.jpg could not be read as an image "
                                         r".*is a JPEG cut short"):
        inputs.read_image(str(tmp_path / "cut.jpg"))
    with pytest.raises(ValueError, match=r"image is a JPEG cut short"):
        inputs.decode_image(jpeg[:len(jpeg) // 3])
    (tmp_path / "whole.jpg").write_bytes(jpeg + b"\0\0")  # padding after the end is fine
    assert inputs.read_image(str(tmp_path / "whole.jpg")).shape == (64, 64, 3)


def test_a_model_path_of_the_wrong_kind_is_named(tmp_path):
    text = tmp_path / "model.txt"
    text.write_text("weights?")
    with pytest.raises(ValueError, match=r"--model=.*model.txt: .*expected a .keras, .tflite"):
        inputs.load_propagator(str(text))
    fake = tmp_path / "model.tflite"
    fake.write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match=r"--model=.*model.tflite: .*could not be loaded"):
        inputs.load_propagator(str(fake))
    import keras

    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    other.save(tmp_path / "classifier.keras")
    with pytest.raises(ValueError, match=r"--model=.*classifier.keras: .*not a CMP"):
        inputs.load_propagator(str(tmp_path / "classifier.keras"))


# --- annotation --------------------------------------------------------------------------------

def test_positive_clicks_push_four_ways_and_negative_clicks_stay_still():
    sets = annotate.direction_guidance(np.array([[5, 6], [7, 8]], np.float32),
                                       np.array([[1, 1]], np.float32), velocity=30)
    assert len(sets) == 4
    pushes = np.array([vectors[:2] for _, vectors in sets])  # [4, 2 positives, 2]
    np.testing.assert_array_equal(pushes[:, 0], [[30, 0], [-30, 0], [0, 30], [0, -30]])
    np.testing.assert_array_equal(pushes[:, 0], pushes[:, 1])
    assert all(np.all(vectors[2] == 0) for _, vectors in sets)


def test_the_zoom_square_is_the_demos_and_stays_inside():
    points = np.array([[10, 20], [30, 25]], np.float32)  # extent 20 px
    assert annotate.zoom_box(points, 200, 300, zoom_factor=4) == (0, 0, 80)
    x0, y0, side = annotate.zoom_box(points + 100, 200, 300, zoom_factor=3)
    assert side == 60 and (x0, y0) == (90, 92)  # centred on (120, 122.5)
    assert annotate.zoom_box(points * 5, 200, 300, zoom_factor=4) == (0, 0, 200)  # shorter side
    # Clicks spread wider than the shorter side: no square holds them, the whole image is seen
    # (a square of the shorter side left both clicks out, and the mask with them).
    assert annotate.zoom_box(np.array([[15, 120], [305, 120]], np.float32), 240, 320) is None
    assert annotate.zoom_box(points[:1], 200, 300) is None
    assert annotate.zoom_box(points, 200, 300, zoom_factor=-1) is None
    # two clicks 1 px apart mark one point: a 4 px square confined the mask to it
    assert annotate.zoom_box(np.array([[40, 30], [41, 30]], np.float32), 64, 96) is None
    assert annotate.zoom_box(np.array([[40, 30], [48, 30]], np.float32), 64, 96)[2] == 32


def test_overlay_and_working_size_name_what_they_cannot_take(propagator):
    """A float mask indexed rows of the image; a mask of another size, NumPy's IndexError;
    working_size(0, 0) answered (128, 128)."""
    image, mask = _square_scene()
    assert annotate.overlay(image, mask).shape == image.shape
    for bad in (mask.astype(np.float32), mask[:10]):
        with pytest.raises(ValueError, match=r"overlay takes an \[H, W, 3\] image and a bool"):
            annotate.overlay(image, bad)
    for height, width in ((0, 0), (-5, 10), ("10", 10)):
        with pytest.raises(ValueError, match=r"must be a whole number of pixels >= 1"):
            propagator.working_size(height, width)


def test_the_input_helpers_name_what_they_cannot_take():
    """A 1-D array of clicks was an IndexError, a string for image bytes a TypeError."""
    with pytest.raises(ValueError, match=r"--positive must be rows of \(x, y, \.\.\.\); got "
                                         r"shape \(2,\)"):
        inputs.check_inside(np.array([1.0, 2.0]), 10, 10, "--positive")
    with pytest.raises(ValueError, match=r"image must be an encoded image's bytes; got str"):
        inputs.decode_image("abc")


@pytest.mark.parametrize("values", [[], ["a"], ["0"], ["1.5"], ["2", "-1"], ["1_0"]])
def test_a_list_flags_counts_name_the_flag_and_all_it_was_given(values):
    with pytest.raises(ValueError, match=rf"^--ks={re.escape(','.join(values))} must be whole "
                                         r"numbers >= 1\.$"):
        inputs.counts(values, "--ks")


def test_a_list_flags_counts_read_whole_numbers_and_may_allow_none():
    assert inputs.counts(["1", " 25", "400"], "--ks") == [1, 25, 400]
    assert inputs.counts([], "--fill_strides", allow_empty=True) == []
    assert inputs.counts(["2"], "--sides", minimum=2) == [2]


def test_a_negative_click_on_a_positive_clicks_pixel_is_refused(tmp_path):
    """The guides on one pixel were averaged: the push halved, the still click doing nothing,
    and the mask as without it."""
    image, _ = _square_scene()
    with pytest.raises(ValueError, match=r"negative item 2 \(40,30\) is on the pixel of a "
                                         r"positive click"):
        annotate.check_clicks(image, [[40, 30]], [[5, 5], [40.3, 29.8]])
    path, _, _ = _write_scene(tmp_path)
    with pytest.raises(ValueError, match=r"--negative item 1 \(40,30\) is on the pixel of a "
                                         r"--positive click"):
        annotate.run("unused", path, "40,30", "40,30", out=str(tmp_path / "m.png"))
    annotate.check_clicks(image, [[40, 30]], [[41, 30]])  # the next pixel is another
    # A point on the border of two pixels takes the later one, as everywhere else.
    with pytest.raises(ValueError, match=r"negative item 1 \(41,30\)"):
        annotate.check_clicks(image, [[40.5, 30]], [[41, 30]])
    annotate.check_clicks(image, [[40, 30]], [[40.5, 30]])


class _RegionPropagator:
    """Moves exactly the pixels of `region` (image coordinates) with the first guide; records
    the guidance it is given."""

    def __init__(self, region):
        self.region, self.calls = region, []

    def propagate_batch(self, image, guidance):
        self.calls.append((image.shape, guidance))
        region = cv2.resize(self.region.astype(np.uint8), image.shape[1::-1],
                            interpolation=cv2.INTER_NEAREST) > 0
        return np.stack([region[..., None] * vectors[0] for _, vectors in guidance])


def test_the_mask_is_where_the_clicks_motion_spreads():
    image, mask = _square_scene()
    fake = _RegionPropagator(mask)
    score = annotate.motion_score(fake, image, [[60, 60]], [], zoom_factor=-1, zoom_size=SIZE)
    assert score.dtype == np.float32 and score.max() == 1
    np.testing.assert_array_equal(score > annotate.THRESHOLD, mask)
    (shape, guidance), = fake.calls
    assert shape == image.shape and len(guidance) == 4


def test_the_whole_image_is_seen_at_the_zoom_size_whatever_its_resolution():
    """Without a zoom square the network saw the image at its own size, `velocity` in its
    pixels: a photo and its enlargement, or a Keras model and a fixed-size file, disagreed on
    a quarter of the mask."""
    image, mask = _square_scene()
    wide = np.concatenate([image, image[:, :SIZE // 2]], axis=1)  # 128 x 192
    large = cv2.resize(wide, None, fx=2.5, fy=2.5, interpolation=cv2.INTER_CUBIC)
    calls = []
    for picture, click in ((wide, [60, 60]), (large, [150.75, 150.75])):
        fake = _RegionPropagator(np.zeros(picture.shape[:2], bool))
        annotate.motion_score(fake, picture, [click], [], zoom_factor=-1, zoom_size=96)
        calls.append(fake.calls[0])
    for shape, guidance in calls:
        assert shape == (64, 96, 3)  # the longer side at zoom_size, the aspect kept
        np.testing.assert_allclose(guidance[0][0], calls[0][1][0][0], atol=1e-4)
        np.testing.assert_array_equal(guidance[0][1][0], [annotate.VELOCITY, 0])
    # Clicks in opposite corners of the image: each is on the mask of what moves with them.
    region = np.ones(wide.shape[:2], bool)
    score = annotate.motion_score(_RegionPropagator(region), wide, [[0, 0], [191, 127]], [])
    assert score[0, 0] == score[-1, -1] == 1


def test_zoomed_scores_come_back_in_image_pixels_and_zero_outside_the_square():
    image, _ = _square_scene()
    fake = _RegionPropagator(np.ones((SIZE, SIZE), bool))
    positive, negative = np.array([[60, 60], [70, 65]], np.float32), np.zeros((0, 2))
    score = annotate.motion_score(fake, image, positive, negative, zoom_factor=4, zoom_size=96)
    x0, y0, side = annotate.zoom_box(positive, SIZE, SIZE, 4)
    assert fake.calls[0][0] == (96, 96, 3)  # the square, resized for the network
    points = fake.calls[0][1][0][0]
    np.testing.assert_allclose(points, (positive - [x0, y0] + 0.5) * 96 / side - 0.5)
    assert score[y0:y0 + side, x0:x0 + side].min() == 1 and score.sum() == side * side


def test_grabcut_pulls_a_rough_motion_mask_onto_the_object_edges():
    image, mask = _square_scene()
    rough = np.zeros_like(mask)
    rough[30:100, 34:96] = True  # the square's box, dilated unevenly
    refined = annotate.grabcut(image, rough, [[60, 60]], [[10, 10]])
    assert _iou(rough, mask) < 0.6 and _iou(refined, mask) > 0.95
    guided = annotate.refine(image, rough.astype(np.float32), [[60, 60]], [], method="guided")
    assert guided.shape == mask.shape
    with pytest.raises(ValueError, match="refine must be one of none, grabcut, guided"):
        annotate.refine(image, rough, [[60, 60]], [], method="crf")
    with pytest.raises(ValueError, match=r"score must be \[H, W\], the image's \(128, 128\); "
                                         r"got \(64, 64\)"):
        annotate.refine(image, rough[::2, ::2], [[60, 60]], [], method="grabcut")


def test_grabcut_gives_the_same_mask_whatever_opencvs_random_state():
    """grabCut's k-means starts from OpenCV's global RNG; the same clicks must give the same
    mask however much of it other code used (a noise image where unseeded runs differ)."""
    for seed in (11, 12):
        rng = np.random.default_rng(seed)
        image = cv2.GaussianBlur(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), (5, 5), 0)
        rough = np.zeros((96, 96), bool)
        rough[20:70, 25:75] = True
        masks = []
        for draws in (3, 7):
            cv2.randu(np.zeros((draws,), np.float32), 0, 1)
            masks.append(annotate.grabcut(image, rough, [[45, 45]], [[2, 2]]))
        np.testing.assert_array_equal(masks[0], masks[1])


def test_clicks_are_checked_before_any_propagation():
    image, _ = _square_scene()
    fake = _RegionPropagator(np.ones((SIZE, SIZE), bool))
    with pytest.raises(ValueError, match="positive needs at least one click"):
        annotate.annotate(fake, image, [], [[1, 1]])
    with pytest.raises(ValueError, match=r"negative item 2 \(x=5, y=200\) lies outside"):
        annotate.annotate(fake, image, [[60, 60]], [[1, 1], [5, 200]])
    with pytest.raises(ValueError, match=r"threshold=1.5 must lie in \(0, 1\)"):
        annotate.annotate(fake, image, [[60, 60]], [], threshold=1.5)
    assert not fake.calls


def test_the_shipped_model_annotates_a_square_from_a_few_clicks(propagator):
    """Its motion is the nearest-guidance fill, so the bare mask is the positive clicks'
    Voronoi cells; the edge refinements pull it onto the square."""
    image, mask = _square_scene()
    positive = [[50, 50], [78, 78], [50, 78], [78, 50]]
    negative = [[30, 30], [98, 98], [30, 98], [98, 30], [30, 64], [98, 64], [64, 30], [64, 98]]
    found = {method: annotate.annotate(propagator, image, positive, negative,
                                       refine_method=method)
             for method in annotate.REFINEMENTS}
    assert all(m.shape == mask.shape and m.dtype == bool for m in found.values())
    assert 0.7 < _iou(found["none"], mask) < _iou(found["guided"], mask)
    assert _iou(found["grabcut"], mask) > 0.95


# --- the commands ------------------------------------------------------------------------------

def _write_scene(folder):
    image, mask = _square_scene()
    path = str(folder / "scene.png")
    inputs.write_image(path, image)
    return path, image, mask


@pytest.mark.slow
@pytest.mark.parametrize("model", ["keras", "tflite"])
def test_both_commands_run_from_a_model_file(tmp_path, exported, propagator, model):
    path, image, mask = _write_scene(tmp_path)
    model_path = None if model == "keras" else str(exported / "model.tflite")
    out, flow_png = animate.run(model_path, path, "64,64,12,-6;5,5,0,0;120,120,0,0", frames=4,
                                out=str(tmp_path / "anim.gif"))
    assert flow_png == str(tmp_path / "anim_flow.png") and os.path.isfile(out)
    colour = cv2.imread(flow_png)
    assert colour.shape == (SIZE, SIZE, 3) and colour.std() > 10  # motion is coloured
    mask_path, share = annotate.run(model_path, path, "50,50;78,78;50,78;78,50",
                                    "30,30;98,98;30,98;98,30;30,64;98,64;64,30;64,98",
                                    out=str(tmp_path / "mask.png"), refine_method="grabcut")
    found = cv2.imread(mask_path, cv2.IMREAD_GRAYSCALE) > 0
    assert _iou(found, mask) > 0.95 and share == pytest.approx(found.mean())
    shown = cv2.imread(str(tmp_path / "mask_overlay.png"))[..., ::-1]  # beside it, in RGB
    np.testing.assert_array_equal(shown[50, 50], annotate.CLICK_COLOURS[0])  # a click
    np.testing.assert_array_equal(shown[30, 30], annotate.CLICK_COLOURS[1])
    tinted = found.copy()
    tinted[40:90, 40:90] = False  # away from the clicks' dots
    assert np.array_equal(shown[tinted], annotate.overlay(image, found)[tinted])
    if model == "tflite":  # the exported file propagates as the Keras model does
        from cmp_tf.runtime import Propagator

        points, vectors = np.array([[64, 64], [5, 5]], np.float32), np.array(
            [[12, -6], [0, 0]], np.float32)
        tflite = Propagator(model_path).propagate(image, points, vectors)
        keras = propagator.propagate(image, points, vectors)
        assert np.abs(tflite - keras).mean() < 0.05


def test_animate_without_the_fade_moves_the_far_corner_too(tmp_path):
    path, _, _ = _write_scene(tmp_path)
    colours = {}
    for fade in (True, False):
        _, flow_png = animate.run(None, path, "30,30,12,-6", frames=2, fade=fade,
                                  out=str(tmp_path / f"fade_{fade}.gif"))
        colours[fade] = cv2.imread(flow_png).astype(np.float32)
    far = (slice(SIZE - 12, SIZE), slice(SIZE - 12, SIZE))  # 120 px from the one arrow
    # zero motion is white in the colour coding: the faded corner is paler
    assert (255 - colours[False][far]).mean() > (255 - colours[True][far]).mean() + 20


@pytest.mark.slow
def test_the_commands_refuse_to_write_over_their_image_and_bound_its_size(tmp_path):
    """Checked before the model loads: --out naming the photo replaced it with the mask (or
    the flow picture), and annotate decoded and refined any size (~100 B a pixel)."""
    path, _, _ = _write_scene(tmp_path)
    before = open(path, "rb").read()
    with pytest.raises(ValueError, match=r"--out=.* is the input image \(--image="):
        annotate.run("unused", path, "5,5", out=path)
    through_missing = os.path.join(tmp_path, "missing", "..", os.path.basename(path))
    with pytest.raises(ValueError, match=r"is the input image"):  # read as the photo's path
        annotate.run("unused", path, "5,5", out=through_missing)
    assert open(path, "rb").read() == before
    mask_picture = tmp_path / "m_overlay.png"
    mask_picture.write_bytes(before)
    with pytest.raises(ValueError, match=r"--out=.*m_overlay.png is the input image"):
        annotate.run("unused", str(mask_picture), "5,5", out=str(tmp_path / "m.png"))
    flow_picture = tmp_path / "x_flow.png"
    flow_picture.write_bytes(before)
    with pytest.raises(ValueError, match=r"--out=.*x_flow.png is the input image"):
        animate.run("unused", str(flow_picture), "5,5,1,1", out=str(tmp_path / "x.gif"))
    with pytest.raises(ValueError, match=r"at most --max_pixels=1000 pixels are accepted"):
        annotate.run("unused", path, "5,5", out=str(tmp_path / "m.png"), max_pixels=1000)
    with pytest.raises(ValueError, match=r"--zoom_size=100000 must be a whole number of pixels "
                                         r"in \[32, 2048\]"):
        annotate.run("unused", path, "5,5", out=str(tmp_path / "m.png"), zoom_size=100000)
    with pytest.raises(ValueError, match=r"--velocity=1e\+09 must be at most 1e\+06"):
        annotate.run("unused", path, "5,5", out=str(tmp_path / "m.png"), velocity=1e9)
    # a second run without --image, its output there from the first: the flag is named
    (tmp_path / "m.png").write_bytes(before)
    (tmp_path / "x.gif").write_bytes(before)
    with pytest.raises(ValueError, match=r"^--image is required"):
        annotate.run("unused", None, "5,5", out=str(tmp_path / "m.png"))
    with pytest.raises(ValueError, match=r"^--image is required"):
        animate.run("unused", None, "5,5,1,1", out=str(tmp_path / "x.gif"))


def test_the_commands_fail_with_the_flag_named(tmp_path):
    path, _, _ = _write_scene(tmp_path)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-m", "cmp_tf.apps.animate", f"--image={path}", "--arrows=500,5,1,1",
         f"--out={tmp_path / 'x.gif'}"], capture_output=True, text=True, env=env, timeout=120,
        check=False)
    assert result.returncode == 1
    assert "--arrows item 1 (x=500, y=5) lies outside the 128x128 image" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "cmp_tf.apps.annotate", f"--image={path}", "--positive=3,4",
         f"--model={tmp_path}", f"--out={tmp_path / 'm.png'}"], capture_output=True,
        text=True, env=env, timeout=120, check=False)
    assert result.returncode == 1 and f"--model={tmp_path}: " in result.stderr
    assert not os.path.exists(tmp_path / "m.png") and not os.path.exists(tmp_path / "x.gif")
    result = subprocess.run(
        [sys.executable, "-m", "cmp_tf.apps.web", f"--model={path}", "--port=0"],
        capture_output=True, text=True, env=env, timeout=120, check=False)
    assert result.returncode == 1 and f"--model={path}: " in result.stderr


# --- the page's server ----------------------------------------------------------------------------

SERVER_MAX_SIDE, SERVER_MAX_BYTES = 256, 2**20


@pytest.fixture(scope="module")
def server(propagator):
    """The page's server on a free localhost port, in a thread."""
    from cmp_tf.apps.web import server as server_lib

    with serving(server_lib.make_server(propagator, port=0, max_side=SERVER_MAX_SIDE,
                                        max_bytes=SERVER_MAX_BYTES)) as httpd:
        yield httpd


def _request(httpd, method, path, body=None, headers=None):
    """(status, parsed JSON or raw bytes) of one raw request: the path is sent as written."""
    import http.client
    import json

    connection = http.client.HTTPConnection(*httpd.server_address[:2], timeout=120)
    data = None if body is None else (body if isinstance(body, bytes) else
                                      json.dumps(body).encode())
    headers = {"Content-Type": "application/json", **(headers or {})} if data else headers
    connection.request(method, path, body=data, headers=headers or {})
    response = connection.getresponse()
    raw = response.read()
    connection.close()
    if response.getheader("Content-Type") == "application/json":
        return response.status, json.loads(raw)
    return response.status, raw


def _b64_png(image):
    import base64

    return "data:image/png;base64," + base64.b64encode(
        cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()).decode()


def _decode(b64, flags=cv2.IMREAD_COLOR):
    import base64

    return cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), flags)


def test_the_server_binds_localhost_and_serves_its_page(server):
    assert server.server_address[0] == "127.0.0.1"
    status, page = _request(server, "GET", "/")
    assert status == 200 and b'<canvas id="canvas"' in page
    status, script = _request(server, "GET", "/app.js?v=1")
    assert status == 200 and b"api/animate" in script
    status, info = _request(server, "GET", "/api/info")
    assert info["max_side"] == SERVER_MAX_SIDE and info["refine"] == annotate.REFINE


@pytest.mark.parametrize("path", [
    "/../server.py", "/%2e%2e/server.py", "/..%2f..%2finputs.py", "/static/../../animate.py",
    "/%2e%2e%2f%2e%2e%2f%2e%2e%2fruntime.py", "//etc/passwd", "/..%5c..%5cinputs.py",
    "/nothing.html", "/%00index.html"])
def test_no_file_outside_the_page_folder_is_served(server, path):
    status, body = _request(server, "GET", path)
    assert status == 404 and set(body) == {"error"}  # a JSON refusal, no file content


def test_a_link_out_of_the_static_folder_is_not_followed(tmp_path):
    from cmp_tf.apps.web import server as server_lib

    root = tmp_path / "static"
    root.mkdir()
    (root / "page.html").write_text("ok")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", root / "link.txt")
    assert server_lib.static_path("/page.html", str(root)) == str(root / "page.html")
    assert server_lib.static_path("/", str(root)) is None  # no index.html there
    assert server_lib.static_path("/link.txt", str(root)) is None
    assert server_lib.static_path("/../secret.txt", str(root)) is None


def test_the_api_animates_and_annotates_a_real_image(server):
    image, mask = _square_scene()
    status, answer = _request(server, "POST", "/api/animate", {
        "image": _b64_png(image), "arrows": [[64, 64, 12, -6], [5, 5, 0, 0]], "frames": 5})
    assert status == 200, answer
    flow_colour = _decode(answer["flow_png"])
    assert flow_colour.shape == (SIZE, SIZE, 3) and flow_colour.std() > 10
    import base64

    import imageio.v3 as iio

    assert iio.imread(base64.b64decode(answer["animation_gif"])).shape == (5, SIZE, SIZE, 3)
    status, answer = _request(server, "POST", "/api/annotate", {
        "image": _b64_png(image), "positive": [[50, 50], [78, 78], [50, 78], [78, 50]],
        "negative": [[30, 30], [98, 98], [30, 98], [98, 30], [30, 64], [98, 64], [64, 30],
                     [64, 98]], "refine": "grabcut"})
    assert status == 200, answer
    found = _decode(answer["mask_png"], cv2.IMREAD_GRAYSCALE) > 0
    assert _iou(found, mask) > 0.95 and answer["share"] == pytest.approx(found.mean())
    assert _decode(answer["overlay_png"]).shape == (SIZE, SIZE, 3)


def test_the_api_refuses_bad_requests_naming_the_field(server):
    image, _ = _square_scene()
    png = _b64_png(image)
    cases = [
        ("/api/animate", {"image": png, "arrows": [[1, 2, 3]]}, 400, "arrows item 1"),
        ("/api/animate", {"image": png, "arrows": [[300, 2, 3, 4]]}, 400,
         "arrows item 1 (x=300, y=2) lies outside the 128x128 image"),
        ("/api/animate", {"image": png, "arrows": [[1, 2, 3, 4]], "frames": 1000}, 400,
         "frames must be an integer in [2, 64]"),
        ("/api/animate", {"image": "not base64!", "arrows": [[1, 2, 3, 4]]}, 400,
         "image is not valid base64"),
        ("/api/animate", {"image": "aGVsbG8=", "arrows": [[1, 2, 3, 4]]}, 400,
         "image could not be decoded"),
        ("/api/animate", {"arrows": [[1, 2, 3, 4]]}, 400, "image must be a base64"),
        ("/api/annotate", {"image": png, "positive": []}, 400, "positive needs at least one"),
        ("/api/annotate", {"image": png, "positive": [[5, 5]], "negative": [[5, -3]]}, 400,
         "negative item 1 (x=5, y=-3) lies outside"),
        ("/api/annotate", {"image": png, "positive": [[5, 5]], "refine": "crf"}, 400,
         "refine must be one of"),
        ("/api/annotate", {"image": _b64_png(np.zeros((40, 300, 3), np.uint8)),
                           "positive": [[5, 5]]}, 413, "300x40 px; at most 256"),
        ("/api/nothing", {}, 404, "not an API route"),
        ("/api/animate", b"{not json", 400, "not JSON"),
        ("/api/animate", [1, 2], 400, "must be a JSON object"),
    ]
    for path, body, status, message in cases:
        got, answer = _request(server, "POST", path, body)
        assert (got, message in answer["error"]) == (status, True), (path, body, answer)


def test_oversized_or_unsized_bodies_are_refused_unread(server):
    import http.client

    for headers, status in (({"Content-Length": str(10 * SERVER_MAX_BYTES)}, 413), ({}, 411)):
        connection = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
        connection.putrequest("POST", "/api/animate", skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == status, response.read()
        connection.close()


@pytest.mark.slow
def test_the_page_api_runs_on_an_exported_file(exported):
    from cmp_tf.apps.web import server as server_lib
    from cmp_tf.runtime import Propagator

    image, mask = _square_scene()
    api = server_lib.App(Propagator(str(exported / "model.tflite")))
    assert api.info()["format"] == "tflite"
    answer = api.animate({"image": _b64_png(image), "arrows": [[64, 64, 12, -6]], "frames": 3})
    # The arrow's own motion at the arrow, the strongest there: its fully saturated colour.
    arrow_colour = flow_lib.flow_to_color(np.array([[[12.0, -6.0]]], np.float32))[0, 0]
    flow_bgr = _decode(answer["flow_png"]).astype(int)
    assert np.abs(flow_bgr[64, 64, ::-1] - arrow_colour).max() <= 8
    answer = api.annotate({"image": _b64_png(image), "positive": [[50, 50], [78, 78]],
                           "negative": [[30, 30], [98, 98], [30, 98], [98, 30]],
                           "refine": "grabcut"})
    assert _iou(_decode(answer["mask_png"], cv2.IMREAD_GRAYSCALE) > 0, mask) > 0.9


def test_several_models_are_labelled_by_name_and_refused_by_flag(monkeypatch, tmp_path):
    """A repeated --model flag: 'shipped' and names from the paths, made unique; a missing
    file is refused naming the flag."""
    loaded = []
    monkeypatch.setattr(inputs, "load_propagator",
                        lambda path, name="--model": loaded.append(path) or path)
    models = inputs.load_propagators(["shipped", "runs/a/", "other/a", "b.tflite"])
    assert list(models) == ["shipped", "a", "a_2", "b"]
    assert loaded == [None, "runs/a/", "other/a", "b.tflite"]
    monkeypatch.undo()
    with pytest.raises(ValueError, match="--model: give at least one model"):
        inputs.load_propagators([])
    with pytest.raises(ValueError, match="--model="):
        inputs.load_propagators([str(tmp_path / "missing.keras")])
