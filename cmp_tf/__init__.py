"""cmp_tf: Conditional Motion Propagation (Zhan et al., CVPR 2019) in TensorFlow / Keras 3."""
__version__ = "0.1.0"
