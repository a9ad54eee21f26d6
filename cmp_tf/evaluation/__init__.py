"""Evaluators: how well a model propagates motion (`benchmark`, and the quick `propagation`
check training ends with), against the `baselines` a user would otherwise use."""
