"""train/train_lora.py end to end on tiny components (CPU, no network): the CLI runs in subprocesses,
as users run it. One file per concern; fixtures in conftest.py, helpers in helpers.py."""
