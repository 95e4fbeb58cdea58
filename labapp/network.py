"""Every network call the app makes (the Hub: a user's LoRA by id, registry models, presets) has a
timeout and fails with one line (issue 30).

huggingface_hub 2.x builds its shared ``httpx`` client with ``timeout=None``: against a Hub that
accepts a connection and never answers, ``HfApi.list_repo_files`` waited 27 minutes while holding
the pipeline slot. ``install_timeouts`` gives that client a connect / read / write timeout
(``DIFFUSION_LAB_HUB_TIMEOUT`` seconds, default 15), and ``within_deadline`` runs one whole
Hub operation (a listing, a metadata request, a download with huggingface_hub's own retries) in a
worker thread under an overall deadline (``DIFFUSION_LAB_HUB_DEADLINE``, default 300 s: a 256 MB
file at 1 MB/s), so a slow repo cannot keep a request for longer whatever the library retries.
The user-LoRA event itself runs outside the pipeline slot (app.py wires it with its own
``concurrency_id``), so a fetch never blocks a generation.
"""
from __future__ import annotations

import os
import threading

HUB_TIMEOUT_ENV = "DIFFUSION_LAB_HUB_TIMEOUT"
HUB_DEADLINE_ENV = "DIFFUSION_LAB_HUB_DEADLINE"
DEFAULT_HUB_TIMEOUT = 15.0  # seconds per connect, read or write: the Hub answers in well under 1 s
DEFAULT_HUB_DEADLINE = 300.0


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not allowed: a number of seconds > 0") from None
    if not 0 < value < 86400:
        raise ValueError(f"{name}={raw!r} is not allowed: a number of seconds > 0")
    return value


def hub_timeout() -> float:
    return _seconds(HUB_TIMEOUT_ENV, DEFAULT_HUB_TIMEOUT)


def hub_deadline() -> float:
    return _seconds(HUB_DEADLINE_ENV, DEFAULT_HUB_DEADLINE)


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def install_timeouts(seconds: float | None = None) -> None:
    """Give huggingface_hub's shared client a timeout on every connect, read and write (idempotent)."""
    import httpx2
    from huggingface_hub.utils import _http

    seconds = hub_timeout() if seconds is None else seconds

    def client_factory():
        return httpx2.Client(event_hooks={"request": [_http.hf_request_event_hook]}, follow_redirects=True,
                             timeout=httpx2.Timeout(seconds))

    client_factory.diffusion_lab_timeout = seconds
    current = getattr(_http, "_GLOBAL_CLIENT_FACTORY", None)
    if getattr(current, "diffusion_lab_timeout", None) != seconds:
        _http.set_client_factory(client_factory)


def within_deadline(what: str, call, *args, deadline: float | None = None, **kwargs):
    """``call(*args, **kwargs)`` in a worker thread; a ValueError naming ``what`` when it takes longer
    than ``deadline`` seconds or fails on the network (the worker is abandoned: its own timeouts end it).
    A ValueError of ``call`` itself (a refusal) is raised as it is."""
    deadline = hub_deadline() if deadline is None else deadline
    result: dict = {}

    def run():
        try:
            result["value"] = call(*args, **kwargs)
        except BaseException as error:  # broad on purpose: handed to the caller's thread
            result["error"] = error

    worker = threading.Thread(target=run, name=f"hub: {what}", daemon=True)
    worker.start()
    worker.join(deadline)
    if worker.is_alive():
        raise ValueError(f"{what}: the Hub ({hub_endpoint()}) did not answer within {deadline:g} s; try again later")
    error = result.get("error")
    if error is None:
        return result["value"]
    if isinstance(error, ValueError):
        raise error
    first = (str(error).strip().splitlines() or [""])[0][:200]
    raise ValueError(f"{what}: the Hub ({hub_endpoint()}) could not be reached ({type(error).__name__}"
                     f"{': ' + first if first else ''}); try again later") from None
