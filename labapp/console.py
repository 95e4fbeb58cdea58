"""What `python app.py` prints: one line for the model it loaded, one for where to open the page,
and warnings only when something is wrong."""
from __future__ import annotations

import logging
import sys


class _DropHarmlessFallback(logging.Filter):
    """transformers warns at import that CLIPImageProcessor / SiglipImageProcessor "require
    torchvision" and fall back to their PIL versions. diffusers imports those classes for the
    safety checker and IP-Adapter; this app never runs an image processor on the embedded model,
    and the PIL fallback is the same computation. Nothing is wrong, so nothing is said."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("requires torchvision" in message and "falling back" in message)


def configure(app_logger: logging.Logger) -> None:
    """Library logs at WARNING (no per-request httpx INFO lines), the app's own at INFO; model
    loading bars only on a terminal (in a log file they come out as ``\\r`` and ``[A`` runs)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app_logger.setLevel(logging.INFO)
    logging.getLogger("transformers.utils.import_utils").addFilter(_DropHarmlessFallback())
    if not sys.stderr.isatty():
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
