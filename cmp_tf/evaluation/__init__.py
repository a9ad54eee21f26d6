"""Evaluators: how well a model propagates motion, and what its encoder transfers."""
from cmp_tf.evaluation.propagation import synthetic_propagation

__all__ = ["synthetic_propagation"]
