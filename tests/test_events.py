"""The per-camera event state machine, the event JSON schema and open-event recovery."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.config import EventsConfig
from stream.events import (
    REASON_BELOW_THRESHOLD,
    REASON_RESTART_RECOVERY,
    REASON_SHUTDOWN,
    REASON_STREAM_GAP,
    Event,
    EventError,
    EventMachine,
    EventSettings,
    OpenEventJournal,
    iso_utc,
    parse_iso_utc,
)
from stream.types import WindowScore

T0 = datetime(2026, 11, 29, 7, 0, 0, tzinfo=timezone.utc).timestamp()
CLASSES = ["normal", "fight", "shoot"]
DISPLAY = ["Normal", "Fighting", "Shooting"]
MODEL = {"name": "dsanet-ucf", "hash": "abc123"}
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
FIGHT = (0.1, 0.8, 0.1)
SHOOT = (0.1, 0.1, 0.8)


def ws(i: int, score: float, probs: tuple[float, ...] = FIGHT, camera: str = "cam1", dur: float = 1.0,
       t0: float = T0) -> WindowScore:
    start = t0 + i * dur
    return WindowScore(camera=camera, index=i, start_time=start, end_time=start + dur, score=score,
                       class_probs=probs, newest_index=i + 2, newest_end_time=start + 3 * dur)


def machine(**kw: float) -> EventMachine:
    cfg = dict(on_threshold=0.6, off_threshold=0.4, min_duration=2.0, hold=3.0, cooldown=10.0, update_interval=5.0)
    cfg.update(kw)
    return EventMachine("cam1", EventSettings(**cfg), CLASSES, DISPLAY, MODEL)


def feed(m: EventMachine, scores: list[float], probs: tuple[float, ...] = FIGHT, first: int = 0
         ) -> list[tuple[int, Event]]:
    """Push scores with consecutive indices; return (index that caused it, event)."""
    out = []
    for k, s in enumerate(scores):
        for e in m.push(ws(first + k, s, probs)):
            out.append((first + k, e))
    return out


def test_start_only_after_min_duration_and_fields() -> None:
    m = machine()
    evs = feed(m, [0.1, 0.9, 0.9, 0.9])
    assert [(i, e.type) for i, e in evs] == [(2, "start")]  # snippets 1-2 cover 2.0 s
    e = evs[0][1]
    assert e.start_time == T0 + 1 and e.updated_time == T0 + 3 and e.end_time is None
    assert e.camera == "cam1" and e.category == "Fighting" and e.category_key == "fight"
    assert e.snippets == 2 and e.seq == 0 and e.peak_score == pytest.approx(0.9)
    assert e.category_score == pytest.approx(0.8)
    assert dict(e.model) == MODEL and e.reason is None and e.evidence is None


def test_zero_min_duration_starts_on_first_high_score() -> None:
    evs = feed(machine(min_duration=0.0), [0.2, 0.7])
    assert [(i, e.type) for i, e in evs] == [(1, "start")]


def test_short_blips_never_start() -> None:
    m = machine()
    assert feed(m, [0.9, 0.2, 0.95, 0.3, 0.99, 0.1, 0.9, 0.59] * 5) == []
    assert m.state == EventMachine.IDLE


def test_end_only_after_hold_and_end_time_is_last_active_snippet() -> None:
    m = machine()
    evs = feed(m, [0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1])
    assert [(i, e.type) for i, e in evs] == [(1, "start"), (5, "end")]  # quiet from T0+3, 3 s by T0+6
    end = evs[-1][1]
    assert end.end_time == T0 + 3  # the anomaly itself ended with snippet 2
    assert end.updated_time == T0 + 6
    assert end.reason == REASON_BELOW_THRESHOLD
    assert end.snippets == 3  # the quiet tail is not part of the event
    assert end.score == pytest.approx(0.1)


def test_dip_shorter_than_hold_keeps_event_and_counts_dip() -> None:
    m = machine()
    evs = feed(m, [0.9, 0.9, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1])
    assert [e.type for _, e in evs] == ["start", "end"]
    assert evs[-1][1].snippets == 5 and evs[-1][1].end_time == T0 + 5


def test_hysteresis_between_thresholds() -> None:
    m = machine()
    # 0.5 is above off (0.4) but below on (0.6): it never starts an event ...
    assert feed(m, [0.5] * 10) == []
    # ... but it keeps an open one alive indefinitely
    evs = feed(m, [0.9, 0.9] + [0.5] * 20, first=10)
    assert [e.type for _, e in evs] == ["start"]
    assert m.open_event_id == evs[0][1].id
    # and a dip that stays between on and off while pending resets the pending start
    m2 = machine()
    assert feed(m2, [0.9, 0.5, 0.9, 0.5, 0.9]) == []


def test_cooldown_blocks_same_category_but_not_another() -> None:
    m = machine(cooldown=10.0)
    evs = feed(m, [0.9, 0.9, 0.1, 0.1, 0.1])  # ends at index 4; event ended at T0+2 -> cooldown until T0+12
    assert [e.type for _, e in evs] == ["start", "end"]
    # same category comes back at once: held back until the cooldown has passed, then fires
    evs = feed(m, [0.9] * 12, first=5)
    starts = [(i, e) for i, e in evs if e.type == "start"]
    assert len(starts) == 1
    i, e = starts[0]
    assert e.updated_time >= T0 + 12 and i == 11  # snippet 11 ends at T0+12
    assert e.start_time == T0 + 5  # the start time still says when it really began
    # another category is not subject to the first one's cooldown
    m2 = machine(cooldown=10.0)
    feed(m2, [0.9, 0.9, 0.1, 0.1, 0.1])
    evs = feed(m2, [0.9, 0.9], probs=SHOOT, first=5)
    assert [(i, e.type, e.category) for i, e in evs] == [(6, "start", "Shooting")]


def test_zero_cooldown_allows_immediate_refire() -> None:
    m = machine(cooldown=0.0, hold=0.0)
    evs = feed(m, [0.9, 0.9, 0.1, 0.9, 0.9])
    assert [e.type for _, e in evs] == ["start", "end", "start"]
    assert evs[0][1].id != evs[2][1].id


def test_category_is_highest_mean_not_majority_or_normal() -> None:
    m = machine(min_duration=3.0)
    # argmax per snippet: fight, fight, shoot (majority = fight); mean: fight 0.367, shoot 0.533
    seq = [(0.9, (0.1, 0.5, 0.4)), (0.9, (0.1, 0.5, 0.4)), (0.9, (0.1, 0.1, 0.8))]
    out = []
    for i, (s, p) in enumerate(seq):
        out += m.push(ws(i, s, p))
    assert [e.type for e in out] == ["start"]
    assert out[0].category == "Shooting" and out[0].category_key == "shoot"
    assert out[0].category_score == pytest.approx(1.6 / 3)
    # the normal column never wins, however large
    m2 = machine(min_duration=0.0)
    e = m2.push(ws(0, 0.9, (0.9, 0.03, 0.07)))[0]
    assert e.category == "Shooting" and e.category_score == pytest.approx(0.07)


def test_updates_on_category_or_peak_change_are_rate_limited() -> None:
    m = machine(min_duration=0.0, update_interval=5.0)
    scores = [0.61 + 0.01 * k for k in range(20)]  # the peak rises on every snippet
    evs = feed(m, scores)
    kinds = [(i, e.type) for i, e in evs]
    assert kinds[0] == (0, "start")
    ups = [e for _, e in evs if e.type == "update"]
    times = [evs[0][1].updated_time] + [e.updated_time for e in ups]
    assert len(ups) >= 3
    assert all(b - a >= 5.0 for a, b in zip(times, times[1:], strict=False))
    assert [e.seq for _, e in evs] == list(range(len(evs)))
    assert ups[-1].peak_score == pytest.approx(scores[ups[-1].snippets - 1])
    # a flat score (no peak change, same category) produces no updates at all
    m2 = machine(min_duration=0.0)
    assert [e.type for _, e in feed(m2, [0.9] * 30)] == ["start"]
    # a category change produces an update (after the rate limit) naming the new category
    m3 = machine(min_duration=0.0, update_interval=2.0)
    evs = feed(m3, [0.9]) + feed(m3, [0.8] * 6, probs=(0.0, 0.0, 1.0), first=1)
    ups = [e for _, e in evs if e.type == "update"]
    assert ups and ups[0].category == "Shooting"


def test_close_on_shutdown() -> None:
    m = machine()
    assert m.close() is None  # nothing open
    evs = feed(m, [0.9, 0.9, 0.9])
    end = m.close(REASON_SHUTDOWN)
    assert end is not None and end.type == "end" and end.reason == "shutdown"
    assert end.id == evs[0][1].id and end.seq == 1 and end.end_time == T0 + 3
    assert m.close() is None and m.state == EventMachine.IDLE
    # pending (not yet started) runs are simply dropped
    m2 = machine()
    feed(m2, [0.9])
    assert m2.close() is None and m2.state == EventMachine.IDLE


def test_ids_stable_unique_and_deterministic() -> None:
    def run() -> list[Event]:
        m = machine(min_duration=0.0, hold=0.0, cooldown=0.0, update_interval=0.0)
        return [e for _, e in feed(m, [0.9, 0.95, 0.1, 0.9, 0.1])]

    a, b = run(), run()
    assert [e.to_dict() for e in a] == [e.to_dict() for e in b]  # deterministic
    ids = [e.id for e in a]
    assert ids[0] == ids[1] == ids[2] and ids[3] == ids[4] and ids[0] != ids[3]
    assert [e.seq for e in a] == [0, 1, 2, 0, 1]
    # another camera with the same times gets other ids
    m = EventMachine("cam2", EventSettings(min_duration=0.0), CLASSES, DISPLAY, MODEL)
    e = m.push(ws(0, 0.9, camera="cam2"))[0]
    assert e.id not in ids


def test_stream_gap_ends_open_event_and_resets_pending() -> None:
    m = machine(min_duration=0.0, hold=3.0)
    feed(m, [0.9, 0.9])
    evs = m.push(ws(100, 0.9))  # 98 s without scores (camera offline)
    assert [e.type for e in evs] == ["end", "start"]
    assert evs[0].reason == REASON_STREAM_GAP and evs[0].end_time == T0 + 2
    m2 = machine(min_duration=3.0)
    feed(m2, [0.9, 0.9])
    assert m2.push(ws(50, 0.9)) == []  # the pending run started over: 1 s is not 3 s


def test_duplicate_or_old_scores_are_ignored() -> None:
    m = machine(min_duration=0.0)
    first = m.push(ws(0, 0.9))
    assert len(first) == 1
    assert m.push(ws(0, 0.9)) == [] and m.push(ws(-1, 0.1)) == []


def test_bad_input_and_config_give_clear_errors() -> None:
    with pytest.raises(EventError, match="off_threshold"):
        machine(on_threshold=0.3, off_threshold=0.5)
    m = machine()
    with pytest.raises(EventError, match="cam1.*class probabilities"):
        m.push(WindowScore("cam1", 0, T0, T0 + 1, 0.9, (0.5, 0.5), 1, T0 + 1))
    with pytest.raises(EventError, match="camera 'other'"):
        m.push(ws(0, 0.9, camera="other"))
    with pytest.raises(EventError, match="display names"):
        EventMachine("cam1", None, CLASSES, ["a"], MODEL)


def test_uses_deployment_events_config() -> None:
    cfg = EventsConfig(on_threshold=0.7, off_threshold=0.2, min_duration=0.0, hold=1.0, cooldown=0.0,
                       update_interval=1.0)
    m = EventMachine("cam1", cfg, CLASSES, {"fight": "Fight!"}, MODEL)
    assert m.settings.on_threshold == 0.7 and m.settings.off_threshold == 0.2
    evs = [e for _, e in feed(m, [0.65, 0.75, 0.3, 0.1])]
    assert [e.type for e in evs] == ["start", "end"] and evs[0].category == "Fight!"


def test_json_schema_and_iso_times() -> None:
    m = machine(min_duration=0.0)
    e = m.push(WindowScore("cam1", 0, T0 + 2.3456, T0 + 3.3456, 0.9, FIGHT, 2, T0 + 5))[0]
    d = json.loads(e.to_json())
    assert list(d) == ["schema", "id", "seq", "type", "camera", "category", "category_key", "category_score",
                       "score", "peak_score", "start_time", "end_time", "updated_time", "snippets", "model",
                       "evidence", "reason", "bundle"]
    assert d["start_time"] == "2026-11-29T07:00:02.346Z" and ISO.match(d["updated_time"])
    assert d["end_time"] is None and d["model"] == MODEL and d["type"] == "start"
    back = Event.from_dict(d)
    assert back.id == e.id and abs(back.start_time - e.start_time) < 1e-3
    assert iso_utc(0.0) == "1970-01-01T00:00:00.000Z" and iso_utc(None) is None
    assert parse_iso_utc("2026-11-29T07:00:02.346Z") == pytest.approx(T0 + 2.346)
    with pytest.raises(EventError):
        Event.from_dict({"id": "x"})
    with pytest.raises(EventError):
        Event.from_json(b"{not json")


# --------------------------------------------------------------------------------- open-event journal


def test_journal_recovers_open_events_after_kill(tmp_path) -> None:
    j = OpenEventJournal(tmp_path / "open")
    m1 = machine(min_duration=0.0, update_interval=0.0)
    m2 = EventMachine("cam2", EventSettings(min_duration=0.0, hold=0.0), CLASSES, DISPLAY, MODEL)
    for e in feed(m1, [0.9, 0.95]):
        j.observe(e[1])
    closed = m2.push(ws(0, 0.9, camera="cam2")) + m2.push(ws(1, 0.1, camera="cam2"))
    for e in closed:
        j.observe(e)
    assert [e.type for e in closed] == ["start", "end"]
    # "SIGKILL": a new journal object over the same directory
    j2 = OpenEventJournal(tmp_path / "open")
    rec = j2.recover(now=T0 + 100)
    assert len(rec) == 1  # cam2's event ended properly and was cleared
    r = rec[0]
    assert r.type == "end" and r.reason == REASON_RESTART_RECOVERY and r.camera == "cam1"
    assert r.id == m1.open_event_id and r.seq == 2  # after start (0) and update (1)
    assert r.end_time == T0 + 2 and r.updated_time == T0 + 100 and r.peak_score == pytest.approx(0.95)
    # files stay until the end has been handed on
    assert len(OpenEventJournal(tmp_path / "open").recover()) == 1
    j2.observe(r)
    assert OpenEventJournal(tmp_path / "open").recover() == []


def test_journal_skips_corrupt_files_and_survives_unwritable_dir(tmp_path, caplog) -> None:
    d = tmp_path / "open"
    j = OpenEventJournal(d)
    (d / "garbage.json").write_text("{trunc")
    (d / "x.tmp").write_text("partial")
    assert j.recover() == []
    assert not (d / "garbage.json").exists() and not (d / "x.tmp").exists()
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    bad = OpenEventJournal(blocker / "open")  # cannot create a directory under a file
    e = machine(min_duration=0.0).push(ws(0, 0.9))[0]
    assert bad.record(e) is False and bad.recover() == []
    bad.observe(e)
    assert bad.errors >= 1
    errors = [r for r in caplog.records if r.levelname == "ERROR" and "open-event journal" in r.getMessage()]
    assert len(errors) == 1 and str(blocker) in errors[0].getMessage()  # logged once, with the path


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions as non-root")
def test_journal_readonly_dir(tmp_path) -> None:
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        j = OpenEventJournal(d)
        assert j.record(machine(min_duration=0.0).push(ws(0, 0.9))[0]) is False
    finally:
        d.chmod(0o700)


# ------------------------------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None)
@given(
    scores=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=80),
    min_duration=st.sampled_from([0.0, 1.0, 2.0, 3.5]),
    hold=st.sampled_from([0.0, 1.0, 3.0]),
    cooldown=st.sampled_from([0.0, 5.0]),
    upd=st.sampled_from([0.0, 2.0]),
)
def test_event_stream_invariants(scores, min_duration, hold, cooldown, upd) -> None:
    m = machine(min_duration=min_duration, hold=hold, cooldown=cooldown, update_interval=upd)
    evs = feed(m, scores)
    last = m.close()
    all_ev = [e for _, e in evs] + ([last] if last else [])
    open_id = None
    seqs: dict[str, int] = {}
    for e in all_ev:
        if e.type == "start":
            assert open_id is None  # at most one open event per camera
            open_id = e.id
            assert e.id not in seqs
            assert e.updated_time - e.start_time >= min_duration - 1e-6
        else:
            assert e.id == open_id
        assert e.seq == seqs.get(e.id, -1) + 1
        seqs[e.id] = e.seq
        assert e.peak_score >= 0.6 and 0.0 <= e.category_score <= 1.0
        if e.type == "end":
            open_id = None
            assert e.end_time is not None and e.end_time <= e.updated_time
    assert open_id is None
    # every start is backed by min_duration of scores >= on_threshold ending at that snippet
    for i, e in evs:
        if e.type == "start":
            need = max(1, int(round(min_duration)) if min_duration.is_integer() else int(min_duration) + 1)
            assert all(s >= 0.6 for s in scores[i - need + 1: i + 1])
