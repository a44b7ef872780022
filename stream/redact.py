"""Credential redaction for everything that leaves the process (logs, errors, metrics, events).

``rtsp://user:secret@host/x`` becomes ``rtsp://user:***@host/x``; query parameters that commonly carry
secrets (``password``, ``token``, ...) are masked too. Every place that prints a camera URL goes
through :func:`redact_url`; free text that may embed URLs (exception messages from FFmpeg) goes
through :func:`redact`.
"""

from __future__ import annotations

import logging
import re

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]*)@")
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&;](?:password|passwd|pwd|pass|token|access_token|api_key|apikey|key|secret|auth|sig|signature)=)"
    r"(?P<val>[^&;#\s]*)",
    re.IGNORECASE,
)
MASK = "***"


def redact(text: object) -> str:
    """Mask passwords in every URL-like substring of ``text``."""
    s = str(text)
    s = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", s)
    return _QUERY_SECRET.sub(lambda m: f"{m['key']}{MASK}", s)


def redact_url(url: str) -> str:
    """A camera URL safe to show: user name kept, password and secret query values masked."""
    return redact(url)


class RedactingFilter(logging.Filter):
    """Logging filter that redacts the fully formatted message of every record it sees.

    Installed on the root handlers by the service so that third-party messages (FFmpeg, paho) that echo a
    URL cannot leak a password either.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a broken format string must not kill logging
            return True
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, ()
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Attach :class:`RedactingFilter` to every handler of ``logger`` (root by default)."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
