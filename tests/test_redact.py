"""Credential redaction: one helper that every log line, error, metric label, event and CLI line goes through.

Two layers are tested: the URL patterns (which must hold for unencoded ``@``, ``:`` and spaces) and the
registered secrets (every configured password and token, masked raw and URL-encoded wherever it appears).
The property tests draw passwords from the whole printable ASCII range; ``FUZZ`` counts how many
examples ran, and ``DSANET_RESULTS_DIR`` makes the last test write those counts to ``redact_fuzz.json``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import string
import subprocess
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.redact import (
    MASK,
    RedactingFilter,
    RedactingStream,
    clear_secrets,
    redact,
    redact_url,
    register_secret,
)

ROOT = Path(__file__).resolve().parents[1]
PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F))  # the whole printable ASCII range, space included
FUZZ: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _no_leftover_secrets():
    clear_secrets()
    yield
    clear_secrets()


def test_userinfo_password_is_masked_user_kept() -> None:
    assert redact_url("rtsp://admin:hunter2@10.0.0.5:554/Streaming/101") == "rtsp://admin:***@10.0.0.5:554/Streaming/101"
    assert redact_url("rtsps://u:p%40ss@cam.local/x") == "rtsps://u:***@cam.local/x"


@pytest.mark.parametrize("pw", ["Winter@2024", "a:b@c", "two words", "p@ss word:x@", "@@", "x y@z"])
def test_unencoded_at_colon_and_space_in_passwords_are_masked_by_pattern_alone(pw: str) -> None:
    url = f"rtsp://viewer:{pw}@192.0.2.10:554/stream1"
    out = redact(f"cannot open {url}: 401 Unauthorized")
    assert out == "cannot open rtsp://viewer:***@192.0.2.10:554/stream1: 401 Unauthorized"


def test_urls_without_credentials_are_unchanged() -> None:
    for url in ("rtsp://10.0.0.5/x", "file:///tmp/a.mp4", "http://user@host/x", "rtsp://10.0.0.5:554/a?b=c"):
        assert redact_url(url) == url


def test_secrets_in_query_free_text_headers_and_bare_authorities() -> None:
    text = "open failed for http://h/stream?user=a&password=pw123&token=tok456 and rtsp://a:b@c/d"
    out = redact(text)
    assert "pw123" not in out and "tok456" not in out and "a:b@" not in out
    assert "user=a" in out and "rtsp://a:***@c/d" in out
    # FFmpeg prints authorities without a scheme; HTTP debug output prints the Authorization header
    assert redact("[tcp] connecting to viewer:s3cr3t@127.0.0.1:8554") == "[tcp] connecting to viewer:***@127.0.0.1:8554"
    assert "dmlld2VyOnMzY3IzdA" not in redact("Authorization: Basic dmlld2VyOnMzY3IzdA==\r\n")
    assert "tok-9" not in redact("authorization: Bearer tok-9")


def test_registered_secrets_are_masked_raw_url_encoded_and_as_basic_auth() -> None:
    pw = "Winter@2024 /?#"
    register_secret(pw, user="viewer")
    import base64

    basic = base64.b64encode(f"viewer:{pw}".encode()).decode()
    for form in (pw, quote(pw, safe=""), quote(pw), basic):
        out = redact(f"free text {form} and more")
        assert form not in out and MASK in out and out.startswith("free text ")
    register_secret("ab")  # too short to mask as a bare string (it would eat ordinary words)
    assert redact("about") == "about"


def test_logging_filter_redacts_formatted_messages_and_tracebacks() -> None:
    register_secret("Tr4ceback-Secret")
    logger = logging.getLogger("test.redact")
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    try:
        logger.warning("cannot open %s", "rtsp://root:topsecret@cam/1")
        try:
            raise OSError("connect to rtsp://root:Tr4ceback-Secret@cam/1 failed")
        except OSError:
            logger.exception("reader failed")
        logger.warning("stack", stack_info=True, extra={})
    finally:
        logger.removeHandler(handler)
    text = handler.stream.getvalue()
    assert "cannot open rtsp://root:***@cam/1" in text
    assert "Traceback (most recent call last)" in text and "OSError: connect to rtsp://root:***@cam/1" in text
    assert "topsecret" not in text and "Tr4ceback-Secret" not in text


def test_redacting_stream_masks_secrets_split_across_writes() -> None:
    register_secret("SplitSecret-42")
    inner = io.StringIO()
    s = RedactingStream(inner)
    s.write("password is Split")
    s.write("Secret-42 ok\nnext ")
    s.flush()
    assert inner.getvalue() == "password is *** ok\nnext "


# ----------------------------------------------------------------------------------- property tests

passwords = st.text(alphabet=PRINTABLE, min_size=1, max_size=40)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pw=passwords, user=st.text(alphabet=string.ascii_letters + string.digits + "._-", min_size=1, max_size=12))
def test_property_any_printable_password_is_masked_in_urls_and_free_text(pw: str, user: str) -> None:
    """Whatever printable password a user types into ``rtsp://user:${PW}@host/...`` (raw, as the config
    substitutes it, or URL-encoded, as they should), no form of it survives once the config registered it,
    and the text around it survives."""
    clear_secrets()
    register_secret(pw, user=user)
    for url_pw in (pw, quote(pw, safe="")):
        url = f"rtsp://{user}:{url_pw}@192.0.2.10:554/stream1"
        text = f"camera lobby: cannot open {url!r}: Server returned 401 Unauthorized\nnext line"
        out = redact(text)
        forms = {pw, quote(pw, safe="")}
        if len(pw) >= 4:
            for form in forms:
                assert form not in out, (pw, out)
            FUZZ["registered"] += 1
        # the text around survives, unless the drawn password is itself part of it (hypothesis also
        # draws words it finds in the code, and a registered secret is masked wherever it appears)
        context = f"{user} camera lobby: cannot open : Server returned 401 Unauthorized\nnext line 192.0.2.10:554/stream1"
        if len(pw) < 4 or not any(f in context for f in forms):
            assert out.endswith("401 Unauthorized\nnext line"), out
            assert "192.0.2.10:554/stream1" in out
    # URL patterns alone, no registration: the encoded form (the documented way) is always masked
    clear_secrets()
    out = redact(f"rtsp://{user}:{quote(pw, safe='')}@192.0.2.10/x")
    assert out == f"rtsp://{user}:***@192.0.2.10/x"
    FUZZ["pattern_only"] += 1


@settings(max_examples=300, deadline=None)
@given(pw=st.text(alphabet=PRINTABLE.replace("\n", ""), min_size=1, max_size=30).filter(
    lambda s: not any(c in s for c in "/?#")))
def test_property_pattern_alone_masks_unencoded_passwords_without_delimiters(pw: str) -> None:
    """Without registration (a URL built elsewhere), an unencoded password that holds no URL delimiter
    (``/?#``) is still masked whole by the pattern, '@', ':' and spaces included."""
    clear_secrets()
    out = redact(f"open rtsp://viewer:{pw}@cam.local:554/s failed")
    assert out == "open rtsp://viewer:***@cam.local:554/s failed", (pw, out)
    FUZZ["pattern_unencoded"] += 1


def test_check_config_prints_no_part_of_an_at_password(tmp_path: Path) -> None:
    """The issue's reproduction: ``LOBBY_PASSWORD='Winter@2024' dsanet check-config configs/example.yaml``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOBBY_PASSWORD": "Winter@2024"}
    others = {"DSANET_WEBHOOK_TOKEN": "tok-Abc@123", "DSANET_WEBHOOK_SECRET": "hmac#Secret",
              "MQTT_PASSWORD": "mq@tt pw"}
    env.update(others)
    res = subprocess.run([sys.executable, "-m", "stream.cli", "check-config", str(ROOT / "configs" / "example.yaml")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = res.stdout + res.stderr
    assert "viewer:***@" in out, out
    for part in ("Winter", "2024@", "@2024", *others.values()):
        assert part not in out, out


def test_zz_write_fuzz_counts() -> None:
    """Runs last in this file: the property tests' example counts, for docs/reliability.md."""
    assert FUZZ["registered"] > 0 and FUZZ["pattern_only"] > 0 and FUZZ["pattern_unencoded"] > 0
    out = os.environ.get("DSANET_RESULTS_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "redact_fuzz.json").write_text(json.dumps(dict(FUZZ), sort_keys=True))
