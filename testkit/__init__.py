"""Seeded model components and helpers that tests/ and bench/ both build on (bench/ never imports
tests/, and no test module imports another: what tests share lives here or in a conftest.py):
tiny SD components (``tiny``), the mid-size UNet and SD 1.5's architecture with random weights
(``components``, configs in ``configs/sd15``), LoRA files (``lora_factory``), a stock pipeline and
call for the LoRA tests (``stock_pipe``), a Gradio server on tiny components (``app_server``), the
one chromium launcher (``browser``), the hostile-input table (``hostile_cases``, ``hostile_helpers``),
the LoRA trainer's test helpers (``train_lora``), a fault scenario (``faults``) and the repository's
paths (``paths``). No downloads anywhere."""
