"""Credential redaction: one helper that every log line, error, metric label and event goes through."""

from __future__ import annotations

import logging

from stream.redact import RedactingFilter, redact, redact_url


def test_userinfo_password_is_masked_user_kept() -> None:
    assert redact_url("rtsp://admin:hunter2@10.0.0.5:554/Streaming/101") == "rtsp://admin:***@10.0.0.5:554/Streaming/101"
    assert redact_url("rtsps://u:p%40ss@cam.local/x") == "rtsps://u:***@cam.local/x"


def test_urls_without_credentials_are_unchanged() -> None:
    for url in ("rtsp://10.0.0.5/x", "file:///tmp/a.mp4", "http://user@host/x"):
        assert redact_url(url) == url


def test_secrets_in_query_and_free_text() -> None:
    text = "open failed for http://h/stream?user=a&password=pw123&token=tok456 and rtsp://a:b@c/d"
    out = redact(text)
    assert "pw123" not in out and "tok456" not in out and "a:b@" not in out
    assert "user=a" in out and "rtsp://a:***@c/d" in out


def test_logging_filter_redacts_formatted_messages(caplog) -> None:  # noqa: ANN001
    logger = logging.getLogger("test.redact")
    handler = logging.Handler()
    records: list[str] = []
    handler.emit = lambda r: records.append(r.getMessage())  # type: ignore[method-assign]
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    try:
        logger.warning("cannot open %s", "rtsp://root:topsecret@cam/1")
    finally:
        logger.removeHandler(handler)
    assert records == ["cannot open rtsp://root:***@cam/1"]
