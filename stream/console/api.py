"""The JSON API under ``/api/v1`` (documented in docs/api.md; keep the two in step).

Handlers stay thin: reads come from ``ServiceControl.camera_snapshots`` and the console store, changes
go through ``stream.reload.LiveConfig`` (validated like the file, applied, written back). Blocking calls
(starting or stopping a reader, writing the file) run in the thread pool, never on the event loop that
also carries the live feed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from stream.calibrator import CalibrationUnavailable
from stream.console.store import score_dict
from stream.control import CameraSnapshot
from stream.events import EventError, parse_iso_utc
from stream.reload import ChangeError

if TYPE_CHECKING:
    from stream.console.app import Console

API = "/api/v1"
MAX_PAGE = 200


def _num(v: float | None, nd: int = 4) -> float | None:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return None
    return round(float(v), nd)


def camera_dict(s: CameraSnapshot) -> dict[str, Any]:
    d = dataclasses.asdict(s)
    d["fps"] = _num(s.fps, 2)
    d["lag_seconds"] = _num(s.lag_seconds, 3)
    d["score"] = _num(s.score)
    return d


def with_urls(ev: dict[str, Any]) -> dict[str, Any]:
    """An event payload plus ``snapshot_url``/``clip_url`` under /evidence/ when it has evidence."""
    out = dict(ev)
    evd = ev.get("evidence") or {}
    for key in ("snapshot", "clip"):
        p = evd.get(key) if isinstance(evd, dict) else None
        out[f"{key}_url"] = f"/evidence/{quote(p)}" if p else None
    return out


def error(status: int, message: str, problems: list[str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "problems": problems or [message]}, status_code=status)


async def _body(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise ChangeError("the request body is not JSON", status=400) from None


def _time(q: str | None, key: str) -> float | None:
    if q is None or q == "":
        return None
    try:
        return float(q)
    except ValueError:
        pass
    try:
        return parse_iso_utc(q)
    except EventError:
        raise ChangeError(f"{key}: {q!r} is neither ISO-8601 nor UNIX seconds", status=400) from None


def routes(console: Console) -> list[Route]:
    live = console.live

    def cam_json(s: CameraSnapshot) -> dict[str, Any]:
        d = camera_dict(s)
        if console.calibration is not None:
            d["calibration"] = console.calibration.describe(s.name)
        return d

    def snapshot(name: str) -> CameraSnapshot | None:
        return next((s for s in console.control.camera_snapshots() if s.name == name), None)

    def guarded(fn: Any) -> Any:
        async def handler(request: Request) -> Response:
            try:
                return await fn(request)
            except ChangeError as exc:
                return error(exc.status, str(exc), exc.problems)

        return handler

    async def status(request: Request) -> Response:
        return JSONResponse({
            "version": console.version, "api": "v1", "config_file": str(live.path) if live.path else None,
            "persistent": live.persistent, "persist_note": live.persist_note,
            "model": console.model_info, "categories": console.categories,
            "evidence": console.evidence_dir is not None, "feed_clients": console.feed.clients,
            "feed_dropped": console.feed.dropped})

    async def cameras(request: Request) -> Response:
        snaps = console.control.camera_snapshots()
        return JSONResponse({"cameras": [cam_json(s) for s in snaps]})

    async def camera(request: Request) -> Response:
        name = request.path_params["name"]
        s = snapshot(name)
        if s is None:
            return error(404, f"camera {name!r} is not configured")
        return JSONResponse(cam_json(s))

    async def scores(request: Request) -> Response:
        name = request.path_params["name"]
        if snapshot(name) is None:
            return error(404, f"camera {name!r} is not configured")
        since = _time(request.query_params.get("since"), "since")
        return JSONResponse({"camera": name, "scores": console.store.history(name, since)})

    async def add(request: Request) -> Response:
        raw = await _body(request)
        cam, change = await run_in_threadpool(live.add_camera, raw)
        s = snapshot(cam.name)
        return JSONResponse({"camera": cam_json(s) if s else {"name": cam.name}, "persisted": change.persisted,
                             "note": change.note}, status_code=201)

    async def remove(request: Request) -> Response:
        name = request.path_params["name"]
        change = await run_in_threadpool(live.remove_camera, name)
        console.store.forget_camera(name)
        return JSONResponse({"removed": name, "persisted": change.persisted, "note": change.note})

    async def patch(request: Request) -> Response:
        name = request.path_params["name"]
        body = await _body(request)
        if not isinstance(body, dict) or not body:
            raise ChangeError("expected a JSON object with enabled, on_threshold and/or off_threshold", status=400)
        unknown = sorted(set(body) - {"enabled", "on_threshold", "off_threshold"})
        if unknown:
            raise ChangeError(f"unknown key(s) {', '.join(unknown)}: a camera accepts enabled, on_threshold, "
                              f"off_threshold here (remove and add it to change anything else)", status=400)
        changes = []
        if "enabled" in body:
            if not isinstance(body["enabled"], bool):
                raise ChangeError(f"enabled: must be true or false, not {body['enabled']!r}")
            changes.append(await run_in_threadpool(live.set_enabled, name, body["enabled"]))
        if "on_threshold" in body or "off_threshold" in body:
            changes.append(await run_in_threadpool(live.set_thresholds, name, body.get("on_threshold"),
                                                   body.get("off_threshold")))
        s = snapshot(name)
        return JSONResponse({"camera": cam_json(s) if s else {"name": name},
                             "persisted": all(c.persisted for c in changes),
                             "note": next((c.note for c in changes if c.note), None)})

    async def events(request: Request) -> Response:
        q = request.query_params
        try:
            limit = int(q.get("limit", "50"))
            cursor = int(q["cursor"]) if q.get("cursor") else None
        except ValueError:
            raise ChangeError("limit and cursor must be integers", status=400) from None
        if not 1 <= limit <= MAX_PAGE:
            raise ChangeError(f"limit must be between 1 and {MAX_PAGE}", status=400)
        page = console.store.events(camera=q.get("camera") or None, category=q.get("category") or None,
                                    since=_time(q.get("since"), "since"), until=_time(q.get("until"), "until"),
                                    limit=limit, cursor=cursor)
        return JSONResponse({"events": [with_urls(e) for e in page.events], "next_cursor": page.next_cursor,
                             "total": page.total})

    async def event(request: Request) -> Response:
        eid = request.path_params["id"]
        found = console.store.event(eid)
        if found is None:
            return error(404, f"event {eid!r} is not among the recent events")
        payload, curve = found
        out = with_urls(payload)
        out["curve"] = [{"time": round(t, 3), "score": round(s, 4)} for t, s in curve]
        return JSONResponse(out)

    async def stream(request: Request) -> Response:
        first: list[tuple[str, Any]] = [("cameras", {"cameras": [cam_json(s)
                                                                  for s in console.control.camera_snapshots()]})]
        return StreamingResponse(console.feed.stream(first), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def calibration(request: Request) -> Response:
        name = request.path_params["name"]
        if snapshot(name) is None:
            return error(404, f"camera {name!r} is not configured")
        if console.calibration is None:
            return error(409, "calibration is not available in this service")
        if request.method == "GET":
            return JSONResponse({"camera": name, "calibration": console.calibration.describe(name)})
        raw = await request.body()
        body: Any = {}
        if raw.strip():
            body = await _body(request)
        if not isinstance(body, dict) or set(body) - {"now"} or not isinstance(body.get("now", False), bool):
            raise ChangeError("expected an empty body or a JSON object {\"now\": true|false}", status=400)
        try:
            desc = await run_in_threadpool(console.calibration.relearn, name, bool(body.get("now", False)))
        except CalibrationUnavailable as exc:
            return error(409, str(exc))
        return JSONResponse({"camera": name, "calibration": desc}, status_code=202)

    async def reload(request: Request) -> Response:
        rep = await run_in_threadpool(live.reload)
        return JSONResponse(rep.to_dict(), status_code=200 if not rep.errors else 422)

    return [
        Route(f"{API}/status", guarded(status), methods=["GET"]),
        Route(f"{API}/cameras", guarded(cameras), methods=["GET"]),
        Route(f"{API}/cameras", guarded(add), methods=["POST"]),
        Route(f"{API}/cameras/{{name}}", guarded(camera), methods=["GET"]),
        Route(f"{API}/cameras/{{name}}", guarded(remove), methods=["DELETE"]),
        Route(f"{API}/cameras/{{name}}", guarded(patch), methods=["PATCH"]),
        Route(f"{API}/cameras/{{name}}/scores", guarded(scores), methods=["GET"]),
        Route(f"{API}/cameras/{{name}}/calibration", guarded(calibration), methods=["GET", "POST"]),
        Route(f"{API}/events", guarded(events), methods=["GET"]),
        Route(f"{API}/events/{{id}}", guarded(event), methods=["GET"]),
        Route(f"{API}/stream", guarded(stream), methods=["GET"]),
        Route(f"{API}/reload", guarded(reload), methods=["POST"]),
    ]


__all__ = ["routes", "camera_dict", "with_urls", "score_dict"]
