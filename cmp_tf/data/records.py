"""The TFRecord schema of a training pair: ingestion writes it, the input pipeline reads it.

One example holds frame t and frame t+gap as JPEG, the flow and its validity mask as one 16-bit
PNG in KITTI's encoding (`formats.encode_kitti_png`), the frame size and where the pair came
from (source file, frame index, gap). TensorFlow is imported on first use: the ingestion pool's
worker processes pay for it only when they write.
"""
import cv2

from cmp_tf.data import formats

IMAGE1, IMAGE2, FLOW = "image1", "image2", "flow"  # JPEG, JPEG, KITTI PNG (u, v, valid)
HEIGHT, WIDTH = "height", "width"
SOURCE, FRAME, GAP = "source", "frame", "gap"  # video or list line, frame t, t+gap - t


def _jpeg(rgb, quality):
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape} frame as JPEG.")
    return data.tobytes()


def encode_example(frame1, frame2, flow, valid, source, frame, gap, quality):
    """A serialized tf.train.Example of one pair.

    Args:
        frame1, frame2: [H, W, 3] uint8 RGB.
        flow: [H, W, 2] float32 px, frame1 -> frame2; valid: [H, W] (nonzero = valid).
        source: the file (or `list.txt:LINE`) the pair came from; frame, gap: ints.
        quality: JPEG quality of the frames (0..100).
    """
    import tensorflow as tf

    def data(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def number(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

    feature = {
        IMAGE1: data(_jpeg(frame1, quality)),
        IMAGE2: data(_jpeg(frame2, quality)),
        FLOW: data(formats.encode_kitti_png(flow, valid)),
        HEIGHT: number(flow.shape[0]),
        WIDTH: number(flow.shape[1]),
        SOURCE: data(source.encode()),
        FRAME: number(frame),
        GAP: number(gap),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def decode_example(record):
    """Serialized example -> (frame t uint8 [H, W, 3], flow float32 [H, W, 2], valid float32
    [H, W]), in TensorFlow ops (for tf.data). Frame t+gap is not decoded: training needs only t.
    """
    import tensorflow as tf

    features = tf.io.parse_single_example(record, {
        IMAGE1: tf.io.FixedLenFeature([], tf.string),
        FLOW: tf.io.FixedLenFeature([], tf.string),
    })
    image = tf.io.decode_jpeg(features[IMAGE1], channels=3)
    raw = tf.io.decode_png(features[FLOW], channels=3, dtype=tf.uint16)
    raw = tf.cast(raw, tf.float32)
    flow = (raw[..., :2] - formats.KITTI_OFFSET) / formats.KITTI_SCALE
    return image, flow, tf.cast(raw[..., 2] > 0, tf.float32)
