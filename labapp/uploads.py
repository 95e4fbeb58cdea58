"""Safe intake of the one file a visitor can send: the image of the Timestep explorer.

The app's events run with ``preprocess=False`` (``labapp/fields.py``), so the handler gets the
image payload as the client sent it, and this module is the only code that turns it into pixels:

- A file path is accepted only when it resolves (symlinks followed) inside the app's own temp dir
  (``GRADIO_TEMP_DIR``, where Gradio stores uploads and its cache) and names a *regular* file,
  whatever shape the payload has (``FileData`` with or without ``meta``). Gradio's own check skips
  a dict without ``meta``, and Pillow then opened any path on the server (``/etc/...``) or blocked
  forever on a FIFO. Here a FIFO, device or directory is refused from ``stat`` without being
  opened, and the open itself uses ``O_NONBLOCK | O_NOFOLLOW`` and checks ``fstat`` again (the
  path could be swapped between the two). Every refusal has the same wording and never names the
  path: an error must not tell whether some server path exists or what it is.
- Inline ``data:`` URLs get the same size limit as uploads (``MAX_IMAGE_BYTES``; Gradio's
  ``max_file_size`` only guards ``/upload``), checked on the base64 length before decoding.
  ``http(s)`` URLs are never fetched.
- Dimensions are read from the header, before any pixel is decoded: ``MAX_IMAGE_SIDE`` and
  ``MAX_IMAGE_PIXELS`` are far below Pillow's decompression-bomb limit (~179 MP), which let a
  20 kB 13000 x 13000 PNG cost +1.9 GB. Only common raster formats are opened (Pillow's EPS
  plugin, for one, would run Ghostscript).
"""
from __future__ import annotations

import base64
import binascii
import io
import os
import stat
import tempfile

from PIL import Image, ImageOps, UnidentifiedImageError

from . import validation as check

MAX_IMAGE_BYTES = 5 * 1024 * 1024  # any photo a visitor may try; the lab works at 32-1024 px
MAX_IMAGE_SIDE = 8192  # px per side: bigger than any camera frame the lab is meant for
MAX_IMAGE_PIXELS = 16 * 1024 * 1024  # 16 MP: at most 64 MB decoded (RGBA), then resized to <= 1024 px
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
TEMP_DIR_PREFIX = "diffusion-lab-"
NOT_UPLOADED = "a file uploaded to this app (a path outside its uploads, or not a regular file, is never read)"


def use_own_temp_dir() -> str:
    """Give the app its own Gradio temp dir (uploads and served cache) unless the operator set one.

    Gradio serves every file in its temp dir, and the default (``/tmp/gradio``) is shared by every
    Gradio app on the host. Call before any component is created: Gradio reads ``GRADIO_TEMP_DIR``
    when a component is built (its cache dir) and when the server starts (the upload dir).
    """
    if not os.environ.get("GRADIO_TEMP_DIR"):
        os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix=TEMP_DIR_PREFIX)  # mode 0700
    return os.environ["GRADIO_TEMP_DIR"]


def temp_dir() -> str:
    from gradio.utils import get_upload_folder

    return os.path.realpath(get_upload_folder())


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def read_upload(field: str, path) -> bytes:
    """Bytes of an uploaded file: a regular file inside the app's temp dir, at most MAX_IMAGE_BYTES."""
    if not isinstance(path, str) or not path or "\0" in path:
        raise check.fail(field, "<path>", NOT_UPLOADED)
    real = os.path.realpath(path)
    if not _inside(real, temp_dir()):
        raise check.fail(field, "<path>", NOT_UPLOADED)
    try:
        if not stat.S_ISREG(os.stat(real).st_mode):
            raise OSError
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        raise check.fail(field, "<path>", NOT_UPLOADED) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise check.fail(field, "<path>", NOT_UPLOADED)
        if info.st_size > MAX_IMAGE_BYTES:
            raise check.fail(field, f"<{info.st_size} bytes>", f"at most {MAX_IMAGE_BYTES} bytes")
        data = handle.read(MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise check.fail(field, f"<more than {MAX_IMAGE_BYTES} bytes>", f"at most {MAX_IMAGE_BYTES} bytes")
    return data


def decode_data_url(field: str, url: str) -> bytes:
    """``data:image/png;base64,...`` -> bytes, with the upload size limit checked before decoding."""
    header, comma, body = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise check.fail(field, url, "a base64 data: URL (data:image/png;base64,...)")
    if len(body) > (MAX_IMAGE_BYTES + 2) // 3 * 4 + 4:
        raise check.fail(field, url, f"at most {MAX_IMAGE_BYTES} bytes (the upload limit applies to data: URLs too)")
    try:
        data = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise check.fail(field, url, "a base64 data: URL (data:image/png;base64,...)") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise check.fail(field, f"<{len(data)} bytes>", f"at most {MAX_IMAGE_BYTES} bytes")
    return data


def payload_bytes(field: str, payload) -> bytes:
    """The bytes behind an image payload, whatever its shape: a FileData-like dict (``path``, or
    ``url`` holding a data: URL), or a bare data: URL string. Anything else is refused."""
    if isinstance(payload, str):
        if payload.startswith("data:"):
            return decode_data_url(field, payload)
        raise check.fail(field, "<path>", NOT_UPLOADED)
    if not isinstance(payload, dict):
        raise check.fail(field, payload, "an image (upload one or pick a shapes-world sample)")
    url = payload.get("url")
    if payload.get("path"):
        return read_upload(field, payload["path"])
    if isinstance(url, str) and url.startswith("data:"):
        return decode_data_url(field, url)
    if url:
        raise check.fail(field, url, "an uploaded file (URLs are never fetched: upload the image instead)")
    raise check.fail(field, payload, "an image (upload one or pick a shapes-world sample)")


def check_dimensions(field: str, width: int, height: int) -> None:
    if max(width, height) > MAX_IMAGE_SIDE or width * height > MAX_IMAGE_PIXELS:
        raise check.fail(field, f"{width}x{height} px",
                         f"at most {MAX_IMAGE_SIDE} px per side and {MAX_IMAGE_PIXELS // 2**20} MP")


def decode_image(field: str, data: bytes) -> Image.Image:
    """Header first (format, dimensions), then the pixels; every failure names the field."""
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError:  # over Pillow's own limit (~179 MP): far over ours
        raise check.fail(field, f"<{len(data)} bytes>", f"at most {MAX_IMAGE_SIDE} px per side and "
                                                       f"{MAX_IMAGE_PIXELS // 2**20} MP") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise check.fail(field, f"<{len(data)} bytes>", f"an image in one of {list(IMAGE_FORMATS)}") from None
    check_dimensions(field, *image.size)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError):
        raise check.fail(field, f"<{len(data)} bytes>", "a complete image (this one is damaged or truncated)") from None
    return image


def read_image(field: str, payload) -> Image.Image:
    """The image a handler may use. A PIL image (direct Python calls) is size-checked only."""
    if payload is None:
        raise check.fail(field, None, "an image (upload one or pick a shapes-world sample)")
    if isinstance(payload, Image.Image):
        check_dimensions(field, *payload.size)
        return payload
    return decode_image(field, payload_bytes(field, payload))



def discard_upload(path) -> None:
    """Delete an upload once it has been read (a LoRA or a settings file is read once; issue 30). Only
    a regular file inside the app's temp dir is ever removed."""
    try:
        real = os.path.realpath(path)
        if _inside(real, temp_dir()) and stat.S_ISREG(os.lstat(real).st_mode):
            os.unlink(real)
    except (OSError, TypeError, ValueError):
        pass


def uploaded_file(field: str, payload, max_bytes: int) -> tuple[str, str]:
    """(real path, original file name) of an uploaded file (a LoRA), checked like ``read_upload``:
    a regular file inside the app's temp dir, at most ``max_bytes``; never a URL or a data: URL."""
    if not isinstance(payload, dict) or not payload.get("path"):
        raise check.fail(field, payload if not isinstance(payload, dict) else payload.get("url"),
                         "an uploaded file (URLs and server paths are never read)")
    path = payload["path"]
    if not isinstance(path, str) or "\0" in path:
        raise check.fail(field, "<path>", NOT_UPLOADED)
    real = os.path.realpath(path)
    if not _inside(real, temp_dir()):
        raise check.fail(field, "<path>", NOT_UPLOADED)
    try:
        info = os.stat(real)
    except OSError:
        raise check.fail(field, "<path>", NOT_UPLOADED) from None
    if not stat.S_ISREG(info.st_mode):
        raise check.fail(field, "<path>", NOT_UPLOADED)
    if info.st_size > max_bytes:
        raise check.fail(field, f"<{info.st_size} bytes>", f"at most {max_bytes} bytes")
    name = payload.get("orig_name") or os.path.basename(real)
    return real, name if isinstance(name, str) else os.path.basename(real)
