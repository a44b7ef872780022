"""Credential redaction for everything that leaves the process (logs, errors, metrics, events, CLI output).

Two layers, because patterns alone cannot know where an unencoded password ends:

1. **Patterns.** ``rtsp://user:secret@host/x`` becomes ``rtsp://user:***@host/x`` also when the password
   holds unencoded ``@``, ``:`` or spaces (the userinfo runs to the *last* ``@`` that is followed by a
   host, on the same line and before the next ``scheme://``); ``user:pass@host`` without a scheme (as
   FFmpeg prints it), secret query values (``password``, ``token``, ...) and ``Authorization`` header
   values are masked too.
2. **Registered secrets.** When a config loads, every configured secret (each camera URL's password, the
   webhook and MQTT credentials, tokens, HMAC secrets, secret query values) is registered with
   :func:`register_secret`; :func:`redact` then replaces every occurrence of it, raw and in its
   URL-encoded and Basic-auth forms, wherever it appears, like CI systems mask their secrets. Secrets
   shorter than :data:`MIN_SECRET_LEN` characters are not registered as bare strings (masking every
   ``ab`` in a log would destroy it); the patterns still mask them inside URLs.

Every place that prints a camera URL goes through :func:`redact_url`; free text goes through
:func:`redact`; the log filter redacts formatted messages *and* traceback text; the CLI wraps its
stdout/stderr (:func:`install_output_redaction`) so nothing printed by any path can carry a secret.
"""

from __future__ import annotations

import base64
import io
import logging
import re
import sys
import threading
from typing import Any, TextIO
from urllib.parse import quote, quote_plus, unquote

MASK = "***"
MIN_SECRET_LEN = 4

_HOST = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9\-]+)*)(?::\d{1,5})?"
# scheme://user:password@host ; the password may hold '@', ':' and spaces: greedy to the last '@' that is
# followed by a host and then a URL delimiter, never across a newline or into another scheme://
_USERINFO = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>(?:(?!://)[^\n\r])*)@"
    r"(?=" + _HOST + r"(?:[/?#\s'\"),;\]>]|$))"
)
# user:password@host without a scheme (FFmpeg prints such authorities); the password has no whitespace here
_BARE_USERINFO = re.compile(
    r"(?<![\w/:@%.\-])(?P<user>[A-Za-z0-9._~%!$&'()*+,;=\-]+):(?P<pw>[^\s/@][^\s]*?)@"
    r"(?=" + _HOST + r"(?:[/?#\s'\"),;\]>]|$))"
)
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&;](?:password|passwd|pwd|pass|token|access_token|api_key|apikey|key|secret|auth|sig|signature)=)"
    r"(?P<val>[^&;#\s]*)",
    re.IGNORECASE,
)
_AUTH_HEADER = re.compile(r"(?P<key>\bAuthorization:\s*(?:Basic|Bearer|Digest)?\s*)(?P<val>[^\s,\"']+)",
                          re.IGNORECASE)

_lock = threading.Lock()
_secrets: set[str] = set()
_secret_re: re.Pattern[str] | None = None


def _forms(secret: str) -> set[str]:
    """The spellings under which a secret can show up in text."""
    out = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret), quote(secret, safe="@:")}
    dec = unquote(secret)
    if dec != secret:
        out |= {dec, quote(dec, safe=""), quote_plus(dec)}
    return {s for s in out if len(s) >= MIN_SECRET_LEN}


def register_secret(secret: Any, user: str | None = None) -> None:
    """Mask ``secret`` (raw, URL-encoded, and as ``base64(user:secret)`` when ``user`` is given) everywhere.

    Called by :func:`stream.config.parse_config` for every configured credential; values shorter than
    :data:`MIN_SECRET_LEN` are ignored (see the module docstring).
    """
    global _secret_re
    if secret is None:
        return
    get = getattr(secret, "get_secret_value", None)
    s = str(get() if callable(get) else secret)
    if len(s) < MIN_SECRET_LEN:
        return
    forms = _forms(s)
    if user is not None:
        for pw in {s, unquote(s)}:
            forms.add(base64.b64encode(f"{unquote(user)}:{pw}".encode()).decode("ascii"))
    with _lock:
        if forms <= _secrets:
            return
        _secrets.update(forms)
        ordered = sorted(_secrets, key=len, reverse=True)  # longest first: a form never leaves a tail behind
        _secret_re = re.compile("|".join(re.escape(x) for x in ordered))


def clear_secrets() -> None:
    """Forget every registered secret (tests)."""
    global _secret_re
    with _lock:
        _secrets.clear()
        _secret_re = None


def url_password_candidates(url: str) -> list[tuple[str, str]]:
    """``(user, password)`` pairs a URL may carry, for registration.

    Both readings are returned: the standard one (``urllib``: userinfo up to the last ``@`` of the
    authority) and ours (up to the last ``@`` followed by a host), since an unencoded ``/``, ``?`` or ``#``
    in a password makes the two differ.
    """
    out: list[tuple[str, str]] = []
    m = _USERINFO.search(url)
    if m:
        out.append((m["user"], m["pw"]))
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        if parts.password is not None and parts.username is not None:
            out.append((parts.username, parts.password))
    except ValueError:
        pass
    for q in _QUERY_SECRET.finditer(url):
        out.append(("", q["val"]))
    return out


def redact(text: object) -> str:
    """Mask passwords, tokens and every registered secret in ``text``."""
    s = str(text)
    pattern = _secret_re
    if pattern is not None:
        s = pattern.sub(MASK, s)
    s = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", s)
    s = _BARE_USERINFO.sub(lambda m: f"{m['user']}:{MASK}@", s)
    s = _AUTH_HEADER.sub(lambda m: f"{m['key']}{MASK}", s)
    return _QUERY_SECRET.sub(lambda m: f"{m['key']}{MASK}", s)


def redact_url(url: str) -> str:
    """A camera URL safe to show: user name kept, password and secret query values masked."""
    return redact(url)


class RedactingFilter(logging.Filter):
    """Logging filter that redacts the formatted message, the traceback text and the stack of a record.

    Installed on the root handlers by the service so that third-party messages (FFmpeg, paho) that echo a
    URL cannot leak a password either. The traceback is formatted here and stored, redacted, in
    ``record.exc_text``, which :class:`logging.Formatter` prints instead of formatting it again.
    """

    _fmt = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a broken format string must not kill logging
            msg = str(record.msg)
        clean = redact(msg)
        if clean != msg or record.args:
            record.msg, record.args = clean, ()
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact(record.exc_text or self._fmt.formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_factory_installed = False


def _install_record_factory() -> None:
    """Redact every record when it is created, so handlers added later (pytest's, a library's) see only
    clean text too."""
    global _factory_installed
    with _lock:
        if _factory_installed:
            return
        _factory_installed = True
    previous = logging.getLogRecordFactory()
    cleaner = RedactingFilter()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        cleaner.filter(record)
        return record

    logging.setLogRecordFactory(factory)


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Redact every log record of the process: a record factory cleans each record as it is created, and
    :class:`RedactingFilter` on every handler of ``logger`` (root by default) cleans what reaches them."""
    _install_record_factory()
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


class RedactingStream(io.TextIOBase):
    """A text stream that redacts whole lines before passing them on.

    Why lines: a secret written in two ``write`` calls would slip through a per-call filter. A partial
    line is held until its newline, ``flush`` or close; interactive prompts are not used by the CLI.
    """

    def __init__(self, inner: TextIO) -> None:
        self.inner = inner
        self._buf = ""
        self._lock = threading.Lock()

    def write(self, s: str) -> int:
        with self._lock:
            self._buf += s
            if "\n" in self._buf:
                head, _, self._buf = self._buf.rpartition("\n")
                self.inner.write(redact(head + "\n"))
        return len(s)

    def flush(self) -> None:
        with self._lock:
            if self._buf:
                self.inner.write(redact(self._buf))
                self._buf = ""
        self.inner.flush()

    def isatty(self) -> bool:
        return self.inner.isatty()

    def fileno(self) -> int:
        return self.inner.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.inner, "encoding", "utf-8")

    def writable(self) -> bool:
        return True


def install_output_redaction() -> None:
    """Route ``sys.stdout`` and ``sys.stderr`` through :class:`RedactingStream` (the CLI calls this first,
    so prints, log handlers created later and Python's own traceback printing are all covered)."""
    if not isinstance(sys.stdout, RedactingStream):
        sys.stdout = RedactingStream(sys.stdout)
    if not isinstance(sys.stderr, RedactingStream):
        sys.stderr = RedactingStream(sys.stderr)
