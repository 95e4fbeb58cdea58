"""Limits on the HTTP server itself, before Gradio sees a request (issue 30).

Gradio 6.31 starts uvicorn with ``uvicorn.Config(app, port, host, log_level, ssl_*)`` in
``gradio.http_server.start_server`` and exposes none of uvicorn's limits through ``launch()``; so
``install`` wraps ``gradio.http_server.Server`` (Gradio's ``uvicorn.Server`` subclass) to adjust the
config before the server loads it:

- **Header timeout**: uvicorn has none (its keep-alive timeout only covers idle connections
  between requests; 300 connections sending endless headers for 90 s all stayed open). The
  connection's protocol (``HeaderTimeoutH11Protocol``) closes a connection whose request line and
  headers have not all arrived within ``HEADER_TIMEOUT`` seconds. Headers are at most h11's 16 kB.
- **Body limit, before parsing**: a JSON request (``/gradio_api/queue/join``, ``/run``, ``/call``,
  ...) may carry at most ``MAX_REQUEST_BYTES`` (one image of the 5 MB upload limit as a ``data:``
  URL, base64, plus the form): a declared ``Content-Length`` over it gets HTTP 413 before a byte
  of the body is read, and a chunked body is counted as it arrives. ``/gradio_api/upload`` gets
  the upload limit (``max_file_size``, the LoRA limit) the same way. Gradio itself read the whole
  body and kept refused inputs per session (20 sessions x 10 MB: +234 MB).
- **Body timeout**: a body must arrive at ``MIN_BODY_RATE`` bytes/s on average after a grace of
  ``BODY_GRACE`` seconds (1 byte per 2 s was kept 120 s; ``Content-Length: 10**12`` was waited on).
- **Upload quota**: the uploads held in the app's temp dir (images, LoRA files, settings files)
  may total ``MAX_UPLOAD_BYTES_HELD`` for the server and ``MAX_UPLOAD_BYTES_PER_CLIENT`` per client
  address within ``UPLOAD_WINDOW`` seconds (Gradio keeps uploads up to an hour: app.DELETE_CACHE).
  Over either, HTTP 429 with the limit named. LoRA and settings uploads are deleted once read
  (``uploads.discard_upload``).

Every refusal is one line of JSON ``{"detail": ...}`` naming what was sent and what is allowed.
"""
from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import defaultdict, deque


def _env(name: str, default: float) -> float:
    """An operator's override (environment), a positive number; the default otherwise."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = 0
    if not value > 0:
        raise ValueError(f"{name}={raw!r} is not allowed: a positive number")
    return value


MAX_REQUEST_BYTES = 8 * 2**20  # a 5 MB image as a data: URL is 6.7 MB; every text field is <= 4000 chars
# seconds for the request line and headers of one request
HEADER_TIMEOUT = _env("DIFFUSION_LAB_HEADER_TIMEOUT", 10.0)
BODY_GRACE = _env("DIFFUSION_LAB_BODY_GRACE", 20.0)  # seconds before the body rate is checked
MIN_BODY_RATE = 32 * 1024  # bytes/s on average: a 256 MB LoRA upload may take ~2 h 15 min, 8 MB ~4.5 min
# all uploads held in the temp dir together, and what one client may upload within UPLOAD_WINDOW
# (two LoRA uploads of the default 256 MB limit, plus images)
MAX_UPLOAD_BYTES_HELD = int(_env("DIFFUSION_LAB_UPLOADS_MB", 1024) * 2**20)
MAX_UPLOAD_BYTES_PER_CLIENT = int(_env("DIFFUSION_LAB_UPLOAD_MB_PER_CLIENT", 600) * 2**20)
UPLOAD_WINDOW = 3600.0  # seconds a client's uploads count against its quota (Gradio keeps them an hour)
BODY_METHODS = ("POST", "PUT", "PATCH")

_state = {"installed": False}


def max_upload_request_bytes() -> int:
    """The largest /upload request: the upload limit (the LoRA limit) plus multipart framing."""
    from . import lora_user_ui, uploads

    return max(uploads.MAX_IMAGE_BYTES, lora_user_ui.max_upload_bytes()) + 64 * 1024


# ------------------------------------------------------------------------------ header timeout


def header_timeout_protocol(base=None, timeout: float = HEADER_TIMEOUT):
    """uvicorn's h11 protocol, closing a connection whose request head takes over ``timeout`` s."""
    if base is None:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base

    class HeaderTimeoutH11Protocol(base):
        header_timeout = timeout

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._head_cycle = self.cycle
            self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

        def _disarm_header_timer(self) -> None:
            timer = getattr(self, "_header_timer", None)
            if timer is not None:
                timer.cancel()
                self._header_timer = None

        def _header_timed_out(self) -> None:
            self._header_timer = None
            if self.cycle is getattr(self, "_head_cycle", None) and not self.transport.is_closing():
                self.transport.close()  # no request head within the time: a slowloris

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not getattr(self, "_head_cycle", None):  # a request head was parsed
                self._disarm_header_timer()

        def on_response_complete(self) -> None:
            done = self.cycle
            super().on_response_complete()  # may start a pipelined request's cycle at once
            if self.cycle is done and not self.transport.is_closing():
                self._arm_header_timer()  # the next request on this connection gets its own time

        def connection_lost(self, exc) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

    return HeaderTimeoutH11Protocol


# ------------------------------------------------------------------------------ upload quota


class UploadQuota:
    """Bytes uploaded per client within ``window`` seconds, and the bytes held in the temp dir."""

    def __init__(self, per_client: int = MAX_UPLOAD_BYTES_PER_CLIENT, held: int = MAX_UPLOAD_BYTES_HELD,
                 window: float = UPLOAD_WINDOW, clock=time.monotonic):
        self.per_client, self.held, self.window, self.clock = per_client, held, window, clock
        self._sent: dict[str, deque] = defaultdict(deque)  # client -> (time, bytes)
        self._lock = threading.Lock()

    def _recent(self, client: str) -> int:
        sent, horizon = self._sent[client], self.clock() - self.window
        while sent and sent[0][0] < horizon:
            sent.popleft()
        return sum(n for _, n in sent)

    def refusal(self, client: str, size: int) -> str | None:
        """None when ``client`` may upload ``size`` more bytes (and counts them), else why not."""
        held = folder_bytes()
        with self._lock:
            recent = self._recent(client)
            if recent + size > self.per_client:
                return (f"upload of {size} bytes is not allowed: at most {self.per_client // 2**20} MB of uploads per "
                        f"client within {self.window / 60:g} minutes ({recent} bytes sent already); try again later")
            if held + size > self.held:
                return (f"upload of {size} bytes is not allowed: the server holds {held // 2**20} MB of uploads, at "
                        f"most {self.held // 2**20} MB in all; try again later")
            self._sent[client].append((self.clock(), size))
            if len(self._sent) > 10_000:  # forget clients with nothing recent
                for key in [k for k, v in self._sent.items() if not v][:5000]:
                    del self._sent[key]
        return None


def folder_bytes() -> int:
    """Bytes of the files in the app's temp dir (uploads and Gradio's cache)."""
    from . import uploads

    total = 0
    for folder, _dirs, files in os.walk(uploads.temp_dir()):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


# ------------------------------------------------------------------------------ the ASGI wrapper


def _client_of(scope) -> str:
    if os.environ.get("SPACE_ID"):  # behind the platform's proxy: the address it forwards
        for name, value in scope.get("headers", ()):
            if name == b"x-forwarded-for":
                return value.decode("latin-1").split(",")[0].strip()
    client = scope.get("client")
    return client[0] if client else "?"


async def _refuse(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    """ASGI middleware: body limits before parsing, body timeouts, the upload quota."""

    def __init__(self, app, quota: UploadQuota | None = None):
        self.app = app
        self.quota = quota or UploadQuota()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in BODY_METHODS:
            return await self.app(scope, receive, send)
        upload = scope.get("path", "").rstrip("/").endswith("/upload")
        limit = max_upload_request_bytes() if upload else MAX_REQUEST_BYTES
        what = "an upload" if upload else "a request body"
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await _refuse(send, 400, f"Content-Length={value[:40]!r} is not allowed: a byte count")
        if declared is not None and declared > limit:
            return await _refuse(send, 413, f"Content-Length={declared} is not allowed: {what} of at most {limit} "
                                            "bytes" + ("" if upload else " (send larger images through /upload)"))
        if upload:
            refusal = self.quota.refusal(_client_of(scope), declared if declared is not None else limit)
            if refusal is not None:
                return await _refuse(send, 429, refusal)
        started, received = time.monotonic(), 0
        expected = declared if declared is not None else limit

        def remaining() -> float:
            return started + BODY_GRACE + expected / MIN_BODY_RATE - time.monotonic()

        if not upload:  # read the whole (small) body here, counted and timed, then hand it on
            chunks, more = [], True
            while more:
                try:
                    message = await asyncio.wait_for(receive(), max(0.0, remaining()))
                except TimeoutError:
                    return await _refuse(send, 408, f"a request body sent slower than {MIN_BODY_RATE} bytes/s is not "
                                                    f"allowed ({received} bytes in {time.monotonic() - started:.0f} s)")
                if message["type"] != "http.request":
                    return  # the client went away
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > limit:
                    return await _refuse(send, 413, f"a request body over {limit} bytes is not allowed")
                chunks.append(chunk)
                more = message.get("more_body", False)
            body, replayed = b"".join(chunks), False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()  # after the body: waits for the disconnect, as uvicorn's does

            return await self.app(scope, replay, send)

        async def timed_receive():
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), max(0.0, remaining()))
            except TimeoutError:
                return {"type": "http.disconnect"}  # the app stops reading; uvicorn closes the connection
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    return {"type": "http.disconnect"}
            return message

        return await self.app(scope, timed_receive, send)


# ------------------------------------------------------------------------------ installing


def configure_server(config, quota: UploadQuota | None = None) -> None:
    """Apply the limits to a uvicorn ``Config`` before it is loaded."""
    if not isinstance(config.app, RequestLimits):
        config.app = RequestLimits(config.app, quota)
    if config.http in ("auto", "h11") or config.http is None:
        config.http = header_timeout_protocol()


def install() -> None:
    """Wrap Gradio's uvicorn server so every launch gets these limits (idempotent)."""
    if _state["installed"]:
        return
    from gradio import http_server

    original = http_server.Server.__init__

    def __init__(self, config, *args, **kwargs):
        configure_server(config)
        original(self, config, *args, **kwargs)

    __init__.unlimited = original
    http_server.Server.__init__ = __init__
    _state["installed"] = True
