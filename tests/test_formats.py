"""The file boundary: list files, flow files, videos; every error names the file (and line)."""
import shutil

import cv2
import numpy as np
import pytest

from cmp_tf.data import formats
from cmp_tf.data.synthetic import write_video
from tests.helpers import panning_frames


def _pair_files(folder, rng, flow_kind="flo", size=(6, 8)):
    folder.mkdir(exist_ok=True)
    image = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
    cv2.imwrite(str(folder / "a.png"), image)
    cv2.imwrite(str(folder / "b.png"), image)
    flow = rng.uniform(-20, 20, (*size, 2)).astype(np.float32)
    if flow_kind == "flo":
        formats.write_flo(folder / "f.flo", flow)
        return flow, ["a.png", "b.png", "f.flo"]
    fx, fy = formats.encode_flow_8bit(flow)
    cv2.imwrite(str(folder / "fx.jpg"), fx, [cv2.IMWRITE_JPEG_QUALITY, 100])
    cv2.imwrite(str(folder / "fy.jpg"), fy, [cv2.IMWRITE_JPEG_QUALITY, 100])
    return flow, ["a.png", "b.png", "fx.jpg", "fy.jpg"]


def test_reference_list_files_with_flo_and_8bit_flow(tmp_path, rng):
    flo, flo_files = _pair_files(tmp_path / "flo", rng, "flo")
    jpg, jpg_files = _pair_files(tmp_path / "jpg", rng, "jpg")
    listing = tmp_path / "train.txt"
    absolute = [str(tmp_path / "jpg" / f) for f in jpg_files]
    listing.write_text("# reference list\n" + " ".join(f"flo/{f}" for f in flo_files) + "\n\n"
                       + " ".join(absolute) + "\n")
    entries, skipped = formats.read_list(listing)
    assert len(entries) == 2 and not skipped
    _, _, flow, valid = formats.read_pair(entries[0])
    np.testing.assert_array_equal(flow, flo)
    assert valid.min() == 1
    _, _, flow, _ = formats.read_pair(entries[1])
    assert np.abs(flow - jpg).max() < 100 / 255 + 0.5  # 8-bit quantum plus JPEG at q=100


def test_readers_and_writers_name_paths_that_are_not_files(tmp_path):
    """Folders, nothing and non-paths were "does not exist", a TypeError or OpenCV's "could
    not write"."""
    for read, kind in ((formats.read_image, "Image file"), (formats.read_flo, "Flow file"),
                       (formats.read_kitti_png, "Flow file")):
        with pytest.raises(ValueError, match=rf"^{kind} .* is a folder, not a file\."):
            read(tmp_path)
        with pytest.raises(ValueError, match=rf"^{kind} path must be a str or os.PathLike; got "
                                             r"int '3'"):
            read(3)
        with pytest.raises(ValueError, match=rf"^{kind} '' does not exist"):
            read("")
    for bad in (None, [1], 3):
        with pytest.raises(ValueError, match=r"paths must be a flow file's path or an \(x, y\)"):
            formats.read_flow(bad)
    flow = np.zeros((4, 4, 2), np.float32)
    with pytest.raises(ValueError, match=r"lies in .*nowhere, which is not a folder"):
        formats.write_flo(tmp_path / "nowhere" / "f.flo", flow)
    (tmp_path / "x.flo").mkdir()
    with pytest.raises(ValueError, match=r"x\.flo is a folder"):
        formats.write_flo(tmp_path / "x.flo", flow)


def test_a_list_file_saved_with_a_byte_order_mark_reads(tmp_path, rng):
    """Windows Notepad's UTF-8 starts with a BOM, which was read as part of the first path: a
    "missing file" whose name looked right."""
    _, files = _pair_files(tmp_path, rng, "flo")
    (tmp_path / "train.txt").write_bytes(b"\xef\xbb\xbf" + " ".join(files).encode() + b"\r\n")
    entries, skipped = formats.read_list(tmp_path / "train.txt")
    assert len(entries) == 1 and not skipped


def test_list_file_errors_name_the_file_and_line(tmp_path, rng):
    _, files = _pair_files(tmp_path, rng)
    listing = tmp_path / "list.txt"
    listing.write_text(" ".join(files) + "\n" + "a.png b.png gone.flo\n")
    with pytest.raises(ValueError, match=r"list\.txt:2: missing file .*gone\.flo"):
        formats.read_list(listing)
    entries, skipped = formats.read_list(listing, on_missing="skip")
    assert len(entries) == 1 and skipped == [f"{listing}:2: missing file {tmp_path}/gone.flo"]
    listing.write_text("a.png b.png\n")
    with pytest.raises(ValueError, match=r"list\.txt:1: expected 'img1 img2 flow.flo'"):
        formats.read_list(listing)


def test_flow_whose_size_differs_from_its_image_is_refused(tmp_path, rng):
    _, files = _pair_files(tmp_path, rng)
    formats.write_flo(tmp_path / "f.flo", np.zeros((5, 8, 2), np.float32))
    (tmp_path / "l.txt").write_text(" ".join(files))
    entry = formats.read_list(tmp_path / "l.txt")[0][0]
    with pytest.raises(ValueError, match=r"l\.txt:1: sizes differ"):
        formats.read_pair(entry)


def test_kitti_png_keeps_flow_to_a_128th_of_a_pixel(tmp_path, rng):
    flow = rng.uniform(-60, 60, (9, 7, 2)).astype(np.float32)
    valid = rng.integers(0, 2, (9, 7))
    (tmp_path / "f.png").write_bytes(formats.encode_kitti_png(flow, valid))
    back, back_valid = formats.read_flow(tmp_path / "f.png")
    assert np.abs(back - flow)[valid > 0].max() <= 1 / 128 + 1e-6
    assert not back[valid == 0].any()  # invalid pixels: no motion
    np.testing.assert_array_equal(back_valid, valid)
    cv2.imwrite(str(tmp_path / "eight.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"eight\.png is not a 16-bit 3-channel KITTI"):
        formats.read_flow(tmp_path / "eight.png")


def test_videos_decode_and_bad_videos_name_the_file(tmp_path):
    path = write_video(tmp_path / "pan.avi", panning_frames(6))
    frames, expected = formats.read_video(path)
    assert len(frames) == 6 and frames[0].shape == (64, 96, 3) and frames[0].dtype == np.uint8
    assert formats.read_video(path, max_side=48)[0][0].shape == (32, 48, 3)
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ValueError, match=r"junk\.mp4"):
        formats.read_video(tmp_path / "junk.mp4")
    with pytest.raises(ValueError, match=r"nothing\.mp4 does not exist"):
        formats.read_video(tmp_path / "nothing.mp4")
    assert formats.list_videos([tmp_path]) == sorted([path, str(tmp_path / "junk.mp4")])
    for side in (0, 0.5, "32", True):  # OpenCV's resize error, or a TypeError
        with pytest.raises(ValueError, match=r"max_side must be -1 \(keep the size\) or a whole"):
            formats.read_video(path, max_side=side)
    strip = write_video(tmp_path / "strip.avi", [np.zeros((2, 400, 3), np.uint8)] * 2)
    assert formats.read_video(strip, max_side=100)[0][0].shape[:2] == (1, 100)  # not 0 px
    with pytest.raises(ValueError, match=r"Frame folder .*nowhere does not exist"):
        formats.frame_files(tmp_path / "nowhere")


def test_ogg_videos_are_listed_and_decoded(tmp_path):
    """Ogg Theora (.ogv), the container of many openly licensed clips, is a video too: a folder
    lists it and its frames decode (ffmpeg reads the container from the bytes)."""
    avi = write_video(tmp_path / "pan.avi", panning_frames(6))
    ogv = tmp_path / "clips" / "pan.OGV"
    ogv.parent.mkdir()
    shutil.copyfile(avi, ogv)
    (tmp_path / "clips" / "notes.txt").write_text("not a video")
    assert formats.list_videos([tmp_path / "clips"]) == [str(ogv)]
    assert len(formats.read_video(ogv)[0]) == 6


def test_flo_round_trip(tmp_path, rng):
    flow = rng.normal(size=(7, 5, 2)).astype(np.float32)
    formats.write_flo(tmp_path / "a.flo", flow)
    back, valid = formats.read_flo(tmp_path / "a.flo")
    np.testing.assert_array_equal(back, flow)
    assert valid.shape == (7, 5) and valid.min() == 1


def test_truncated_and_foreign_flo_files_name_the_file(tmp_path, rng):
    path = tmp_path / "cut.flo"
    formats.write_flo(path, rng.normal(size=(6, 4, 2)).astype(np.float32))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"cut\.flo is truncated"):
        formats.read_flo(path)
    other = tmp_path / "image.flo"
    other.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(ValueError, match=r"image\.flo is not a \.flo file"):
        formats.read_flo(other)
    (tmp_path / "tiny.flo").write_bytes(b"PIEH")
    with pytest.raises(ValueError, match="tiny.flo is truncated"):
        formats.read_flo(tmp_path / "tiny.flo")
    with pytest.raises(ValueError, match="missing.flo does not exist"):
        formats.read_flo(tmp_path / "missing.flo")


def test_nan_flow_is_refused_on_write_and_read(tmp_path):
    flow = np.zeros((3, 3, 2), np.float32)
    flow[1, 1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        formats.write_flo(tmp_path / "n.flo", flow)
    header = np.array([202021.25], "<f4").tobytes() + np.array([3, 3], "<i4").tobytes()
    (tmp_path / "n.flo").write_bytes(header + flow.astype("<f4").tobytes())
    with pytest.raises(ValueError, match=r"n\.flo has 1 NaN"):
        formats.read_flo(tmp_path / "n.flo")


def test_8bit_flow_encoding_matches_the_reference_formula(rng):
    x = np.array([[0, 255, 128]], np.uint8)
    flow = formats.decode_flow_8bit(x, x[:, ::-1])
    np.testing.assert_allclose(flow[0, :, 0], [-50, 50, 128 / 255 * 100 - 50], atol=1e-5)
    smooth = rng.uniform(-49, 49, size=(8, 8, 2)).astype(np.float32)
    back = formats.decode_flow_8bit(*formats.encode_flow_8bit(smooth))
    assert np.abs(back - smooth).max() <= 100 / 255 / 2 + 1e-4  # half a quantum


def test_kitti_invalid_pixels_read_as_no_motion_and_sizes_must_agree(tmp_path):
    """KITTI stores an invalid pixel as 0, which decodes to -512 px: a resize would spread it
    into the valid pixels' targets."""
    flow = np.full((4, 5, 2), 3.0, np.float32)
    valid = np.ones((4, 5), np.float32)
    valid[1, 2] = 0
    path = tmp_path / "k.png"
    path.write_bytes(formats.encode_kitti_png(flow, valid))
    cv2.imwrite(str(tmp_path / "zeros.png"), np.zeros((4, 5, 3), np.uint16))
    back, back_valid = formats.read_kitti_png(path)
    np.testing.assert_array_equal(back_valid, valid)
    np.testing.assert_array_equal(back[1, 2], [0, 0])
    np.testing.assert_allclose(back[valid > 0], 3.0)
    assert not formats.read_kitti_png(tmp_path / "zeros.png")[0].any()
    with pytest.raises(ValueError, match=r"valid must have shape \(4, 5\); got \(3, 3\)"):
        formats.encode_kitti_png(flow, np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"valid must be finite numbers"):  # written invalid
        formats.encode_kitti_png(flow, np.where(valid > 0, 1.0, np.nan))


def test_kitti_flow_beyond_its_range_is_written_invalid_not_clipped(tmp_path):
    flow = np.zeros((2, 3, 2), np.float32)
    flow[0, 0] = (-600, 0)  # beyond +-512 px
    flow[1, 2] = (0, 511.5)
    path = tmp_path / "k.png"
    path.write_bytes(formats.encode_kitti_png(flow, np.ones((2, 3))))
    back, valid = formats.read_kitti_png(path)
    np.testing.assert_array_equal(valid, [[0, 1, 1], [1, 1, 1]])
    np.testing.assert_allclose(back[1, 2], (0, 511.5))


def test_flo_refuses_flow_it_would_read_back_as_unknown(tmp_path):
    flow = np.zeros((3, 3, 2), np.float32)
    flow[1, 1] = (2e9, 0)
    with pytest.raises(ValueError, match=r"1 known pixels of \|u\| or \|v\| >= 1e\+09"):
        formats.write_flo(tmp_path / "a.flo", flow)
    valid = np.ones((3, 3))
    valid[1, 1] = 0  # unknown there: written as unknown, as asked
    formats.write_flo(tmp_path / "a.flo", flow, valid)
    np.testing.assert_array_equal(formats.read_flo(tmp_path / "a.flo")[1], valid)
    with pytest.raises(ValueError, match="valid must be finite numbers"):
        formats.write_flo(tmp_path / "b.flo", np.zeros((3, 3, 2), np.float32),
                          np.full((3, 3), np.nan))


def test_frame_files_take_numbers_in_names_as_numbers_decimal_timestamps_too(tmp_path):
    """Frames named by frame number, or by a decimal timestamp as capture tools write them
    (1617283945.25 before 1617283945.5, which a digit-by-digit order gets backwards)."""
    image = np.zeros((4, 4, 3), np.uint8)
    for folder, names in {
            "numbered": ["frame9.png", "frame10.png", "Frame11.png", "frame100.png"],
            "stamped": ["1617283945.25.jpg", "1617283945.5.jpg", "1617283945.75.jpg",
                        "1617283946.jpg", "1617283946.125.jpg"]}.items():
        (tmp_path / folder).mkdir()
        for name in reversed(names):
            cv2.imwrite(str(tmp_path / folder / name), image)
        listed = [p.rsplit("/", 1)[1] for p in formats.frame_files(tmp_path / folder)]
        assert listed == names


def test_an_8bit_flow_image_in_colour_is_refused_a_grey_one_in_three_channels_read(tmp_path,
                                                                                  rng):
    """A colour picture of flow given as a flow image was read from its blue channel alone."""
    grey = rng.integers(0, 255, (16, 16), np.uint8)
    cv2.imwrite(str(tmp_path / "grey3.jpg"), np.dstack([grey] * 3), [cv2.IMWRITE_JPEG_QUALITY, 90])
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    flow, valid = formats.read_flow((tmp_path / "grey3.jpg", tmp_path / "grey.png"))
    assert flow.shape == (16, 16, 2) and valid.min() == 1
    cv2.imwrite(str(tmp_path / "colour.png"), rng.integers(0, 255, (16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match=r"Flow image .*colour.png is in colour \(its channels "
                                         r"differ by up to \d+ levels\)"):
        formats.read_flow((tmp_path / "colour.png", tmp_path / "grey.png"))


def test_8bit_flow_images_of_two_sizes_are_refused_naming_both_files(tmp_path):
    """decode_flow_8bit's "flow_x and flow_y must be ... of one size" named no file, and
    ingestion recorded it as the pair's warning with no file or line."""
    cv2.imwrite(str(tmp_path / "fx.png"), np.zeros((4, 4), np.uint8))
    cv2.imwrite(str(tmp_path / "fy.png"), np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match=r"Flow images .*fx\.png \(4x4 px\) and .*fy\.png "
                                         r"\(5x4 px\) differ in size"):
        formats.read_flow((tmp_path / "fx.png", tmp_path / "fy.png"))
