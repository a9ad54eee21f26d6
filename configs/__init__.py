"""Recipes: one `get_config(arg)` per file; load with `--config=configs/<name>.py[:arg]`."""
