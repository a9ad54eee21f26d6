"""Stereo pairs with true disparity as flow pairs (cmp_tf.data.stereo)."""
import os

import cv2
import numpy as np
import pytest

from cmp_tf.data import formats
from cmp_tf.data import stereo


def _stereo_scene(height=64, width=96, seed=0):
    """(left, right uint8 RGB, disparity): a textured wall 3 px away in disparity and a box
    8 px, the right view painted from the left, far to near, each pixel moved by -d."""
    rng = np.random.default_rng(seed)
    left = cv2.GaussianBlur(rng.uniform(0, 255, (height, width, 3)).astype(np.float32), (0, 0),
                            1.5).astype(np.uint8)
    disparity = np.full((height, width), 3.0, np.float32)
    disparity[20:44, 40:70] = 8.0
    disparity[:, :4] = np.nan  # unknown, as at a benchmark's border
    return left, stereo_right(left, disparity), disparity


def test_tiles_hold_the_views_and_the_flow_that_maps_left_to_right(tmp_path):
    left, right, disparity = _stereo_scene()
    path = stereo.write_tiles(left, right, disparity, tmp_path / "tiles", short_sides=(64,),
                              tile=48, stride=24)
    entries, skipped = formats.read_list(path)
    assert not skipped and len(entries) == 6  # y at 0, 16 (flush with the end); x at 0, 24, 48
    image1, image2, flow, valid = formats.read_pair(entries[1])  # y from 0, x from 24
    np.testing.assert_array_equal(image1, left[:48, 24:72])
    np.testing.assert_array_equal(image2, right[:48, 24:72])
    np.testing.assert_array_equal(flow[..., 1], 0.0)
    np.testing.assert_array_equal(-flow[..., 0], disparity[:48, 24:72])
    assert valid.all()
    # frame 1 is frame 2 read at x + u, wherever that lands inside the tile and is not hidden
    ys, xs = np.mgrid[:48, :48]
    to_x = xs + flow[..., 0].astype(int)
    seen = (to_x >= 0) & (disparity[:48, 24:72] == 8.0)
    np.testing.assert_array_equal(image1[seen], image2[ys[seen], to_x[seen]])
    first = formats.read_pair(entries[0])
    assert not first[3][:, :4].any() and first[3][:, 4:].all()  # unknown disparity: invalid


def test_tiles_at_a_smaller_scale_scale_the_disparity_and_keep_its_edges(tmp_path):
    left, right, disparity = _stereo_scene()
    path = stereo.write_tiles(left, right, disparity, tmp_path, short_sides=(32,), tile=16,
                              stride=16, min_known=1)
    entries, _ = formats.read_list(path)
    assert len(entries) == 2 * 3  # a 48 x 32 pair: rows at 0, 16; columns at 0, 16, 32
    flows = [formats.read_pair(e)[2][..., 0] for e in entries]
    values = np.unique(np.concatenate([f.ravel() for f in flows]))
    assert set(values.round(3)) <= {0.0, -1.5, -4.0}  # halved, never a blend of the two


@pytest.mark.parametrize("ext", [".pfm", ".npy", ".npz", ".png"])
def test_disparity_files_of_each_format_read_alike(tmp_path, ext):
    disparity = np.array([[1.5, 2.0, np.inf], [0.25, 7.0, 3.0]], np.float32)
    path = str(tmp_path / f"disp{ext}")
    if ext == ".pfm":
        assert cv2.imwrite(path, disparity)
    elif ext == ".npy":
        np.save(path, disparity)
    elif ext == ".npz":
        np.savez(path, disparity)
    else:  # KITTI: x 256, 0 unknown
        assert cv2.imwrite(path, np.nan_to_num(disparity * 256, posinf=0).astype(np.uint16))
    read = stereo.read_disparity(path)
    np.testing.assert_allclose(read[np.isfinite(read)], [1.5, 2.0, 0.25, 7.0, 3.0])
    assert np.isnan(read[0, 2])


def open_npy(array):
    """The bytes of `array` saved as .npy."""
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_pfm_reads_little_and_big_endian_top_row_first_whatever_its_scale(tmp_path):
    values = np.arange(6, dtype=np.float32).reshape(2, 3) + 1
    for name, scale, order in (("le", -1.0, "<f4"), ("be", 1.0, ">f4"), ("scaled", -2.0, "<f4")):
        body = values[::-1].astype(order).tobytes()  # PFM's rows run bottom to top
        (tmp_path / f"{name}.pfm").write_bytes(f"Pf\n3 2\n{scale}\n".encode() + body)
        np.testing.assert_array_equal(stereo.read_pfm(tmp_path / f"{name}.pfm"), values)
    commented = b"Pf\n# written by a tool\n3 2\n-1\n" + values[::-1].astype("<f4").tobytes()
    (tmp_path / "commented.pfm").write_bytes(commented)
    np.testing.assert_array_equal(stereo.read_pfm(tmp_path / "commented.pfm"), values)
    windows = b"Pf\r\n3 2\r\n-1\r\n" + values[::-1].astype("<f4").tobytes()  # read a byte off
    (tmp_path / "windows.pfm").write_bytes(windows)
    np.testing.assert_array_equal(stereo.read_pfm(tmp_path / "windows.pfm"), values)
    assert cv2.imwrite(str(tmp_path / "cv.pfm"), values)  # as OpenCV writes one
    np.testing.assert_array_equal(stereo.read_pfm(tmp_path / "cv.pfm"), values)


def test_disparity_depth_edges_stay_on_the_views_edges_when_downscaled(tmp_path):
    """The tiles' views are area means, centred on their pixels; the disparity must be read at
    the same centres, or its depth edges move by up to half a pixel off the image's."""
    left = np.full((256, 256, 3), 40, np.uint8)
    left[101:201, 101:201] = 220
    disparity = np.full((256, 256), 4.0, np.float32)
    disparity[101:201, 101:201] = 12.0
    right = stereo_right(left, disparity)
    path = stereo.write_tiles(left, right, disparity, tmp_path, short_sides=(64,), tile=64,
                              stride=64)
    image, _, flow, _ = formats.read_pair(formats.read_list(path)[0][0])
    box_in_image = image[..., 0] > 130  # more than half the box
    box_in_flow = flow[..., 0] < -2.0  # 12 px disparity x 0.25 against the wall's 1
    assert (box_in_image != box_in_flow).sum() == 0


def stereo_right(left, disparity):
    """The right view of `left` with `disparity`, far to near, each pixel moved by -d."""
    right = np.zeros_like(left)
    for d in np.unique(disparity[np.isfinite(disparity)]):
        ys, xs = np.nonzero(disparity == d)
        keep = xs - int(d) >= 0
        right[ys[keep], xs[keep] - int(d)] = left[ys[keep], xs[keep]]
    return right


def test_tiles_with_too_little_known_disparity_are_left_out(tmp_path, caplog):
    left, right, disparity = _stereo_scene()
    disparity[:, :60] = np.nan
    path = stereo.write_tiles(left, right, disparity, tmp_path / "some", short_sides=(64,),
                              tile=32, stride=32, min_known=400)
    entries, _ = formats.read_list(path)
    assert len(entries) == 2  # of 6: the right-hand column of tiles, 36 of 96 columns known
    assert all(formats.read_pair(e)[3].sum() >= 400 for e in entries)
    assert "Left out 4 of 6 tiles with fewer than 400 pixels" in caplog.text
    disparity[:] = np.nan
    disparity[0, 0] = 3.0
    with pytest.raises(ValueError, match=r"No tile holds 400 pixels of known disparity"):
        stereo.write_tiles(left, right, disparity, tmp_path / "none", short_sides=(64,),
                           tile=32, stride=32)


def test_a_disparity_or_views_the_pair_cannot_have_are_refused(tmp_path):
    left, right, disparity = _stereo_scene()
    with pytest.raises(ValueError, match=r"disparity reaches 2048 px, beyond the views' width "
                                         r"of 96 px: is it stored scaled"):
        stereo.write_tiles(left, right, disparity * 256, tmp_path, short_sides=(64,), tile=32)
    with pytest.raises(ValueError, match=r"are the views swapped, or is the disparity the "
                                         r"right view's\?"):
        stereo.write_tiles(right, left, disparity, tmp_path, short_sides=(64,), tile=32)
    assert not (tmp_path / "pairs.txt").exists()


def test_a_scale_given_twice_is_cut_once(tmp_path):
    left, right, disparity = _stereo_scene()
    path = stereo.write_tiles(left, right, disparity, tmp_path, short_sides=(64, 64), tile=32,
                              stride=32)
    assert len(formats.read_list(path)[0]) == 6


def test_bad_disparity_files_and_arguments_are_refused_naming_them(tmp_path):
    with pytest.raises(ValueError, match=r"Disparity file .*gone.pfm does not exist"):
        stereo.read_disparity(tmp_path / "gone.pfm")
    (tmp_path / "d.txt").write_text("1 2 3")
    with pytest.raises(ValueError, match=r"unknown extension '.txt'; expected .pfm, .npy"):
        stereo.read_disparity(tmp_path / "d.txt")
    (tmp_path / "broken.pfm").write_bytes(b"Pf\n3 2\n-1.0\n\x00\x00")
    with pytest.raises(ValueError, match=r"broken.pfm could not be decoded as PFM: its header, "
                                         r"3 x 2 px in 1 channel\(s\), needs 24 bytes of values; "
                                         r"2 follow it"):
        stereo.read_disparity(tmp_path / "broken.pfm")
    for name, header in (("negative", b"Pf\n-4 3\n-1.0\n"), ("huge", b"Pf\n100000 100000\n-1\n"),
                         ("zero_scale", b"Pf\n1 1\n0\n"), ("words", b"Pf\nfour three\n-1\n"),
                         ("magic", b"P5\n1 1\n255\n")):
        (tmp_path / f"{name}.pfm").write_bytes(header + b"\x00" * 48)
        with pytest.raises(ValueError, match=rf"{name}.pfm could not be decoded as PFM: "):
            stereo.read_disparity(tmp_path / f"{name}.pfm")
    (tmp_path / "cut.npy").write_bytes(open_npy(np.ones((4, 4), np.float32))[:-8])
    (tmp_path / "text.npy").write_text("1 2 3\n4 5 6\n")
    np.save(tmp_path / "objects.npy", np.array([None, 1], object))
    for name in ("cut", "text", "objects"):  # NumPy's own words name no file
        with pytest.raises(ValueError, match=rf"{name}.npy could not be read"):
            stereo.read_disparity(tmp_path / f"{name}.npy")
    np.savez(tmp_path / "two.npz", a=np.ones((2, 2)), b=np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"two.npz holds 2 arrays \(a, b\); expected one"):
        stereo.read_disparity(tmp_path / "two.npz")
    np.save(tmp_path / "neg.npy", np.array([[1.0, -2.0]], np.float32))
    with pytest.raises(ValueError, match=r"neg.npy has 1 negative values"):
        stereo.read_disparity(tmp_path / "neg.npy")
    np.save(tmp_path / "none.npy", np.full((2, 2), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"none.npy holds no known disparity"):
        stereo.read_disparity(tmp_path / "none.npy")
    (tmp_path / "cut.npz").write_bytes(b"PK\x03\x04 not a whole archive")
    with pytest.raises(ValueError, match=r"cut.npz could not be read"):
        stereo.read_disparity(tmp_path / "cut.npz")
    np.save(tmp_path / "complex.npy", np.ones((2, 2), np.complex64))
    with pytest.raises(ValueError, match=r"complex.npy must hold real numbers; got dtype "
                                         r"complex64"):
        stereo.read_disparity(tmp_path / "complex.npy")
    cv2.imwrite(str(tmp_path / "eight.png"), np.ones((4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"not a 16-bit single-channel KITTI disparity PNG"):
        stereo.read_disparity(tmp_path / "eight.png")
    left, right, disparity = _stereo_scene()
    with pytest.raises(ValueError, match=r"must be one size"):
        stereo.write_tiles(left, right[:, :90], disparity, tmp_path)
    with pytest.raises(ValueError, match=r"left must be an RGB uint8"):
        stereo.write_tiles(left.astype(np.float32), right, disparity, tmp_path)
    with pytest.raises(ValueError, match=r"short_sides must be integers >= tile=160"):
        stereo.write_tiles(left, right, disparity, tmp_path, short_sides=(64,))


def test_the_command_writes_tiles_evaluate_reads(tmp_path):
    import subprocess
    import sys

    left, right, disparity = _stereo_scene()
    for name, view in (("l.png", left), ("r.png", right)):
        cv2.imwrite(str(tmp_path / name), cv2.cvtColor(view, cv2.COLOR_RGB2BGR))
    np.save(tmp_path / "d.npy", disparity)
    done = subprocess.run([sys.executable, "-m", "cmp_tf.data.stereo", f"--left={tmp_path}/l.png",
                           f"--right={tmp_path}/r.png", f"--disparity={tmp_path}/d.npy",
                           f"--out={tmp_path}/tiles", "--short_sides=64", "--tile=32",
                           "--stride=32"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "6 tiles of 32 px in" in done.stdout  # 64 x 96: 2 rows, 3 columns
    entries, _ = formats.read_list(tmp_path / "tiles" / "pairs.txt")
    assert len(entries) == 6

    again = [*done.args[:-3], "--short_sides=80", "--tile=32", "--stride=32"]
    refused = subprocess.run(again, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "--overwrite" in refused.stderr, refused.stderr[-2000:]
    assert "holds 19 files of earlier tiles" in refused.stderr  # 6 x 3 tiles and pairs.txt
    replaced = subprocess.run([*again, "--overwrite"], capture_output=True, text=True,
                              timeout=300)
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert not [n for n in (tmp_path / "tiles").iterdir() if n.name.startswith("s64_")]


def test_earlier_tiles_are_replaced_only_when_asked_and_other_files_stay(tmp_path):
    left, right, disparity = _stereo_scene()
    stereo.write_tiles(left, right, disparity, tmp_path, short_sides=(64,), tile=32, stride=32)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"--out=.* holds 19 files of earlier tiles \(pairs\.txt"):
        stereo.write_tiles(left, right, disparity, tmp_path, short_sides=(32,), tile=32)
    path = stereo.write_tiles(left, right, disparity, tmp_path, short_sides=(32,), tile=32,
                              overwrite=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["notes.txt", "pairs.txt", "s32_y0_x0_flow.png", "s32_y0_x0_left.png",
                     "s32_y0_x0_right.png", "s32_y0_x16_flow.png", "s32_y0_x16_left.png",
                     "s32_y0_x16_right.png"]
    assert len(formats.read_list(path)[0]) == 2


def test_tiles_cut_short_are_written_again_without_overwrite(tmp_path):
    """A run killed while writing tiles left them without pairs.txt (written last), and every
    rerun refused them as earlier tiles until --overwrite."""
    left, right, disparity = _stereo_scene()
    stereo.write_tiles(left, right, disparity, tmp_path, short_sides=(64,), tile=32, stride=32)
    os.remove(tmp_path / "pairs.txt")
    path = stereo.write_tiles(left, right, disparity, tmp_path, short_sides=(32,), tile=32)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("s64_")]
    assert len(formats.read_list(path)[0]) == 2


def test_a_list_moved_without_its_tiles_names_a_missing_tile(tmp_path):
    left, right, disparity = _stereo_scene()
    path = stereo.write_tiles(left, right, disparity, tmp_path / "tiles", short_sides=(64,),
                              tile=32, stride=32)
    moved = tmp_path / "pairs.txt"
    os.replace(path, moved)
    with pytest.raises(ValueError, match=r"no usable entries \(6 skipped; the first, .*pairs.txt:1:"
                                         r" missing file .*s64_y0_x0_left.png \(a relative path "
                                         r"is read from the list's folder\)\)"):
        formats.read_list(moved, on_missing="skip")


def test_a_tile_known_only_outside_the_scored_centre_is_left_out(tmp_path):
    left, _, _ = _stereo_scene(160, 160)
    disparity = np.full((160, 160), np.nan, np.float32)
    disparity[:, :10] = 5.0  # 1600 known pixels, none in the centre 128 x 128 evaluate scores
    disparity[:, 30:32] = 5.0  # 320 more, 256 of them inside it: too few there
    right = stereo_right(left, disparity)
    with pytest.raises(ValueError, match="No tile holds 400 pixels"):
        stereo.write_tiles(left, right, disparity, tmp_path, short_sides=(160,))


def _npy_header(shape):
    """A .npy header declaring a float32 array of `shape`, with no values behind it."""
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False,
                                                  "shape": shape})
    return buffer.getvalue()


def test_a_numpy_header_declaring_a_huge_array_is_refused_naming_the_file(tmp_path):
    """NumPy first allocates what the header declares: a cut or forged .npy / .npz raised its
    MemoryError ("Unable to allocate 35.5 PiB"), naming no file."""
    import zipfile

    huge = (10**8, 10**8)
    (tmp_path / "huge.npy").write_bytes(_npy_header(huge) + bytes(16))
    with pytest.raises(ValueError, match=r"Disparity file .*huge\.npy could not be read"):
        stereo.read_disparity(tmp_path / "huge.npy")
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as archive:
        archive.writestr("arr_0.npy", _npy_header(huge) + bytes(16))
    with pytest.raises(ValueError, match=r"Disparity file .*huge\.npz declares an array too "
                                         r"large to hold"):
        stereo.read_disparity(tmp_path / "huge.npz")


def test_a_pfm_with_more_values_than_its_header_says_is_refused(tmp_path):
    """Bytes beyond the header's size were ignored: a 3-channel file headed "Pf" read as a
    wrong map of the right size. Less than one value more (a trailing newline) still reads."""
    values = np.arange(6, dtype=np.float32).reshape(2, 3) + 1
    body = values[::-1].astype("<f4").tobytes()
    (tmp_path / "newline.pfm").write_bytes(b"Pf\n3 2\n-1\n" + body + b"\n")
    np.testing.assert_array_equal(stereo.read_pfm(tmp_path / "newline.pfm"), values)
    (tmp_path / "rgb.pfm").write_bytes(b"Pf\n3 2\n-1\n" + body * 3)
    with pytest.raises(ValueError, match=r"rgb\.pfm could not be decoded as PFM: its header, "
                                         r"3 x 2 px in 1 channel\(s\), needs 24 bytes of "
                                         r"values; 72 follow it"):
        stereo.read_disparity(tmp_path / "rgb.pfm")
