"""Hub tokens never reach a message or a log line, whatever their source.

A token can come from ``--hub_token`` (visible to every user of the machine in ``ps``: prefer
``HF_TOKEN`` or ``hf auth login``), from ``HF_TOKEN`` / ``HUGGING_FACE_HUB_TOKEN``, or from the
saved login; huggingface_hub sends it as ``Authorization: Bearer <token>``, and a Hub (or proxy)
reply that echoes the request headers put it into the push error verbatim. :func:`redact` removes
every token the process knows of, anything shaped like a Hugging Face token (``hf_...``), and the
value of any ``Bearer`` credential; :func:`install_log_redaction` applies it to every log record.
"""
from __future__ import annotations

import logging
import os
import re

MASK = "***"
TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN")
_PATTERNS = (
    re.compile(r"\bhf_[A-Za-z0-9]{8,}"),  # user access tokens
    re.compile(r"(?i)(bearer\s+)[^\s'\",;]+"),  # Authorization: Bearer <anything>
)


def known_tokens(*explicit: str | None) -> list[str]:
    """Tokens this process may use: the explicit ones, the env vars, the saved login."""
    tokens = [t for t in explicit if t]
    tokens += [os.environ[name] for name in TOKEN_ENV_VARS if os.environ.get(name)]
    try:
        from huggingface_hub import get_token

        saved = get_token()
    except Exception:  # broad on purpose: no hub, unreadable file: nothing more to hide
        saved = None
    if saved:
        tokens.append(saved)
    return sorted({t for t in tokens if len(t) >= 4}, key=len, reverse=True)


def redact(text: str, tokens: list[str] | None = None) -> str:
    """``text`` with every known token and every token-shaped string replaced by ``***``."""
    for token in known_tokens() if tokens is None else tokens:
        text = text.replace(token, MASK)
    text = _PATTERNS[0].sub(MASK, text)
    return _PATTERNS[1].sub(lambda m: m.group(1) + MASK, text)


class RedactingFilter(logging.Filter):
    """A handler filter: the formatted message of every record, redacted."""

    def __init__(self, *explicit: str | None):
        super().__init__()
        self.tokens = known_tokens(*explicit)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # broad on purpose: a malformed record is logging's problem, not ours
            return True
        record.msg, record.args = redact(message, self.tokens), None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info), self.tokens)
            record.exc_info = None
        return True


def install_log_redaction(*explicit: str | None) -> RedactingFilter:
    """Redact every record that reaches a root-logger handler (call after logging.basicConfig)."""
    log_filter = RedactingFilter(*explicit)
    for handler in logging.getLogger().handlers:
        handler.addFilter(log_filter)
    return log_filter
