"""The on-disk delivery spool: durable, ordered, bounded, tolerant of damage and of unusable disks."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import engine.atomic
from stream.sinks.spool import DEAD_LETTER_FILE, Spool

REPO = Path(__file__).resolve().parent.parent


def ev(i: int, camera: str = "cam1") -> dict:
    return {"id": f"e{i}", "seq": 0, "type": "start", "camera": camera, "n": i}


def drain(sp: Spool) -> list[int]:
    out = []
    while (item := sp.peek()) is not None:
        out.append(item.payload["n"])
        sp.ack(item)
    return out


def test_fifo_ack_and_reopen_after_crash(tmp_path) -> None:
    d = tmp_path / "s"
    sp = Spool(d, max_events=100)
    for i in range(5):
        sp.put(ev(i))
    first = sp.peek()
    assert first is not None and first.payload["n"] == 0
    sp.ack(first)
    # "crash": no close, a new object over the same directory
    sp2 = Spool(d, max_events=100)
    assert len(sp2) == 4
    sp2.put(ev(5))  # new entries go after the recovered ones
    assert drain(sp2) == [1, 2, 3, 4, 5]
    assert len(Spool(d, max_events=100)) == 0  # acked entries never come back
    assert sorted(p.name for p in d.iterdir()) == []


def test_ack_is_idempotent_and_peek_does_not_consume(tmp_path) -> None:
    sp = Spool(tmp_path, max_events=10)
    sp.put(ev(1))
    a, b = sp.peek(), sp.peek()
    assert a is b
    sp.ack(a)
    sp.ack(a)
    assert sp.peek() is None and len(sp) == 0


def test_bounded_drops_oldest_and_counts(tmp_path, caplog) -> None:
    sp = Spool(tmp_path / "s", max_events=3)
    for i in range(7):
        sp.put(ev(i))
    assert len(sp) == 3 and sp.dropped == 4
    assert any("spool full" in r.getMessage() for r in caplog.records)
    assert len(list((tmp_path / "s").glob("*.json"))) == 3  # dropped files are deleted too
    # reopening with a smaller bound trims (oldest first) as well
    sp2 = Spool(tmp_path / "s", max_events=2)
    assert sp2.dropped == 1 and drain(sp2) == [5, 6]


def test_bounded_by_bytes(tmp_path) -> None:
    sp = Spool(tmp_path, max_events=1000, max_bytes=500)
    for i in range(50):
        sp.put(ev(i))
    assert sp.bytes <= 500 and sp.dropped > 0
    got = drain(sp)
    assert got == list(range(50 - len(got), 50))  # newest kept, in order


def test_corrupt_and_partial_files_are_tolerated(tmp_path, caplog) -> None:
    d = tmp_path / "s"
    sp = Spool(d, max_events=100)
    for i in range(4):
        sp.put(ev(i))
    files = sorted(d.glob("*.json"))
    files[1].write_bytes(b'{"id": "e1", "seq": 0, "ty')  # torn write
    files[2].write_bytes(b"\x00\x00\xff")  # garbage
    (d / "0000000000000099.tmp").write_bytes(b'{"half":')  # interrupted put
    (d / "notes.txt").write_text("ignored")
    with caplog.at_level(logging.WARNING):
        sp2 = Spool(d, max_events=100)
    assert sp2.corrupt == 2
    assert drain(sp2) == [0, 3]
    assert len(list((d / "corrupt").iterdir())) == 2  # kept aside for a person to look at
    assert not (d / "0000000000000099.tmp").exists()
    assert sum("unreadable" in r.getMessage() for r in caplog.records) == 2


def test_unwritable_directory_falls_back_to_memory(tmp_path, caplog) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    target = blocker / "spool"  # cannot exist: its parent is a file
    with caplog.at_level(logging.ERROR):
        sp = Spool(target, max_events=3, name="hook")
        for i in range(5):
            sp.put(ev(i))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(target) in errors[0] and "hook" in errors[0]  # once, with the path
    assert not sp.durable and sp.write_errors >= 1
    assert sp.memory_only_count() == 3 and sp.dropped == 2  # still bounded
    assert drain(sp) == [2, 3, 4]
    assert sp.describe()["durable"] is False


def test_disk_full_then_recovers_keeps_order(tmp_path, monkeypatch, caplog) -> None:
    d = tmp_path / "s"
    sp = Spool(d, max_events=100)
    sp.put(ev(0))
    real_open = open

    def full(path, mode="r", *a, **kw):
        if "w" in mode or "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr(engine.atomic, "open", full, raising=False)  # every spool write goes through it
    with caplog.at_level(logging.ERROR):
        sp.put(ev(1))
        sp.put(ev(2))
    assert not sp.durable and sp.write_errors == 2
    assert sum("No space left" in r.getMessage() for r in caplog.records) == 1
    monkeypatch.undo()
    sp.put(ev(3))
    assert sp.durable and sp.memory_only_count() == 2
    assert not list(d.glob("*.tmp"))
    assert drain(sp) == [0, 1, 2, 3]


def test_dead_letter_keeps_event_aside(tmp_path) -> None:
    sp = Spool(tmp_path, max_events=10)
    sp.put(ev(1))
    sp.put(ev(2))
    sp.dead_letter(sp.peek(), "HTTP 400")
    assert sp.dead_letters == 1 and drain(sp) == [2]
    lines = (tmp_path / DEAD_LETTER_FILE).read_text().splitlines()
    rec = json.loads(lines[0])
    assert rec["reason"] == "HTTP 400" and rec["event"]["n"] == 1


def test_concurrent_producer_and_consumer(tmp_path) -> None:
    sp = Spool(tmp_path, max_events=10_000, fsync=False)
    n = 400
    got: list[int] = []

    def consume() -> None:
        while len(got) < n:
            if not sp.wait(5.0):
                return
            item = sp.peek()
            got.append(item.payload["n"])
            sp.ack(item)

    t = threading.Thread(target=consume)
    t.start()
    for i in range(n):
        sp.put(ev(i))
    t.join(30)
    assert got == list(range(n)) and len(sp) == 0


def test_memory_only_spool_without_directory() -> None:
    sp = Spool(None, max_events=2)
    for i in range(3):
        sp.put(ev(i))
    assert sp.dropped == 1 and drain(sp) == [1, 2] and sp.describe()["directory"] is None


_CHILD = """
import sys
from stream.sinks.spool import Spool
sp = Spool(sys.argv[1], max_events=1000)
for i in range(int(sys.argv[2])):
    sp.put({"id": f"e{i}", "seq": 0, "type": "start", "camera": "c", "n": i})
    print(i, flush=True)          # the caller treats a printed number as "put returned"
sp.ack(sp.peek())
print("acked", flush=True)
import time
time.sleep(60)
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_survives_sigkill(tmp_path) -> None:
    d = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(d), "20"], stdout=subprocess.PIPE, text=True,
                            cwd=REPO)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line.strip())
            if line.strip() == "acked":
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
        proc.stdout.close()
    assert lines[-1] == "acked"
    assert drain(Spool(d, max_events=1000)) == list(range(1, 20))
