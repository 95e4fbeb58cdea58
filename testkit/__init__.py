"""Seeded model components and helpers that tests/ and bench/ both build on (bench/ never imports
tests/): tiny SD components (``tiny``), the mid-size UNet and SD 1.5's architecture with random
weights (``components``, configs in ``configs/sd15``), LoRA files (``lora_factory``) and a Gradio
server on tiny components (``app_server``). No downloads anywhere."""
