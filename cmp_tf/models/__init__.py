"""CMP models. Importing this package registers every model part by name, and every custom
layer with Keras (so `keras.models.load_model` reads the files cmp_tf writes)."""
from cmp_tf.models import decoders  # noqa: F401  (registers)
from cmp_tf.models import fills  # noqa: F401
from cmp_tf.models import heads  # noqa: F401
from cmp_tf.models import image_encoders  # noqa: F401
from cmp_tf.models import sparse_encoders  # noqa: F401
from cmp_tf.models.cmp import assemble, build_cmp, build_encoder, build_head, check_sides, \
    computes_in_float32, fill_stride, in_float32, traced_max_side

__all__ = ["assemble", "build_cmp", "build_encoder", "build_head", "check_sides",
           "computes_in_float32", "fill_stride", "in_float32", "traced_max_side"]
