"""Atomic, write-once image files in Gradio's cache.

Gradio (6.31) turns every PIL/numpy image output into a file with
``processing_utils.save_pil_to_cache``: the name is the hash of the encoded bytes, and the
file is rewritten in place (``Path.write_bytes``: truncate, then write) every time the same
image is returned again. This app returns the same picture many times (a preview that did not
change between two steps, the final image shown in two places, a sweep re-run), so the browser
can be fetching ``/file=.../image.png`` exactly while the server truncates and rewrites it:
the server has announced the old Content-Length, reads fewer bytes, and the browser reports
``net::ERR_CONTENT_LENGTH_MISMATCH`` with a broken image. CI caught this in the browser test.

Gradio's own ``save_file_to_cache`` already does it right (skip when present, otherwise write
to a temporary name and rename into place); :func:`save_pil_to_cache` applies the same rule to
images. Content addressing makes it safe: an existing file of that name holds those bytes.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from gradio import processing_utils

_original = processing_utils.save_pil_to_cache


def save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
    """Drop-in for ``gradio.processing_utils.save_pil_to_cache`` that never rewrites a served file."""
    data = processing_utils.encode_pil_to_bytes(img, format)  # raises KeyError/ValueError as before
    folder = Path(cache_dir) / processing_utils.hash_bytes(data)
    folder.mkdir(exist_ok=True, parents=True)
    target = (folder / f"{name}.{format}").resolve()
    if target.exists():
        try:  # delete_cache ages files by ctime: a file handed out again must not expire early
            os.utime(target)
        except OSError:
            pass
        return str(target)
    fd, staging = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(staging, 0o644)
        os.replace(staging, target)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return str(target)


def install() -> None:
    """Route Gradio's image outputs through :func:`save_pil_to_cache` (idempotent)."""
    processing_utils.save_pil_to_cache = save_pil_to_cache


def uninstall() -> None:
    processing_utils.save_pil_to_cache = _original
