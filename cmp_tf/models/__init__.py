"""CMP models. Importing this package registers every model part by name."""
from cmp_tf.models import decoders  # noqa: F401  (registers)
from cmp_tf.models import image_encoders  # noqa: F401
from cmp_tf.models import sparse_encoders  # noqa: F401
from cmp_tf.models.cmp import assemble, build_cmp, build_encoder

__all__ = ["assemble", "build_cmp", "build_encoder"]
