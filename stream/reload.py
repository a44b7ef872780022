"""Runtime configuration of a running service: the deployment as it is applied now, re-reading the file
(SIGHUP, ``dsanet reload``, ``POST /api/v1/reload``) and applying only the difference, and the camera
changes the API makes (applied, then written back into the file when it is writable).

:func:`plan_reload` compares two validated configs camera by camera:

* a camera only in the new file is added, one only in the old file is removed (its open event ends with
  ``reason: camera_removed``);
* ``enabled`` flipped: enabled or disabled in place;
* only its effective ``on_threshold``/``off_threshold`` changed: set in place (the event machine keeps
  its state);
* anything else about it changed (URL, transport, window, other event timings): removed and added again;
* every other camera is not touched, so it keeps streaming.

A change of ``model.bundle`` (alone or with ``model.categories``) is a live bundle swap
(``stream.feedback.FeedbackControl.swap_bundle``: loaded, tried, switched; a refused bundle leaves the
running one scoring and is reported as an error). A change of ``model.categories`` alone is applied live (``set_categories``: the head scores its next
batch against the new class list, no camera restarts). Sections that only a restart can apply (the rest of
model, sinks, http, evidence, spool, ingest, logging, global window) are reported in ``restart_needed``
and left as they run.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.categories import CategoryEdit
from engine.errors import DsanetError
from stream.config import (
    CameraConfig,
    CategoriesConfig,
    ConfigError,
    DeploymentConfig,
    EventsOverride,
    load_config,
    parse_camera,
)
from stream.config_writeback import ConfigFile, WritebackError
from stream.control import ServiceControl
from stream.redact import redact

log = logging.getLogger(__name__)

RESTART_SECTIONS = ("model", "window", "scoring", "still_gate", "ingest", "sinks", "metrics", "http", "evidence",
                    "spool", "logging", "feedback")
_EVENT_TIMINGS = ("min_duration", "hold", "cooldown", "update_interval")


@dataclass(frozen=True)
class ReloadPlan:
    """What a reload changes; empty tuples mean nothing to do."""

    remove: tuple[str, ...] = ()
    add: tuple[CameraConfig, ...] = ()
    restart: tuple[CameraConfig, ...] = ()
    enable: tuple[str, ...] = ()
    disable: tuple[str, ...] = ()
    thresholds: tuple[tuple[str, float, float], ...] = ()
    restart_needed: tuple[str, ...] = ()
    categories_changed: bool = False  # model.categories differs, nothing else in the model section
    categories: CategoriesConfig | None = None  # the new model.categories (None: the bundle's own list)
    bundle: str | None = None  # the new model.bundle when only it (and maybe categories) changed: a live swap

    @property
    def empty(self) -> bool:
        return not (self.remove or self.add or self.restart or self.enable or self.disable or self.thresholds
                    or self.categories_changed or self.bundle)

    def lines(self) -> list[str]:
        out = [f"remove camera {n!r}" for n in self.remove]
        out += [f"add camera {c.name!r} ({redact(c.url)})" for c in self.add]
        out += [f"restart camera {c.name!r} (its settings changed)" for c in self.restart]
        out += [f"enable camera {n!r}" for n in self.enable]
        out += [f"disable camera {n!r}" for n in self.disable]
        out += [f"camera {n!r}: on_threshold {on:g}, off_threshold {off:g}" for n, on, off in self.thresholds]
        return out


def _camera_key(cfg: DeploymentConfig, cam: CameraConfig) -> tuple[Any, ...]:
    """Everything about a camera except enabled and thresholds; a change here needs a reader restart."""
    ev = cfg.events_for(cam)
    return (cam.url, cam.transport, cam.loop, cam.realtime, cfg.window_for(cam),
            tuple(getattr(ev, k) for k in _EVENT_TIMINGS), cfg.scoring_for(cam), cfg.still_gate_for(cam))


def plan_reload(old: DeploymentConfig, new: DeploymentConfig) -> ReloadPlan:
    olds = {c.name: c for c in old.cameras}
    news = {c.name: c for c in new.cameras}
    remove = tuple(n for n in olds if n not in news)
    add = tuple(c for n, c in news.items() if n not in olds)
    restart: list[CameraConfig] = []
    enable: list[str] = []
    disable: list[str] = []
    thresholds: list[tuple[str, float, float]] = []
    for name, nc in news.items():
        oc = olds.get(name)
        if oc is None:
            continue
        if _camera_key(old, oc) != _camera_key(new, nc):
            restart.append(nc)
            continue
        if oc.enabled != nc.enabled:
            (enable if nc.enabled else disable).append(name)
        oe, ne = old.events_for(oc), new.events_for(nc)
        if (oe.on_threshold, oe.off_threshold) != (ne.on_threshold, ne.off_threshold):
            thresholds.append((name, ne.on_threshold, ne.off_threshold))
    sections = tuple(s for s in RESTART_SECTIONS if getattr(old, s) != getattr(new, s))
    # a change of model.categories alone is applied live (Service.set_categories), not by a restart
    categories_changed = old.model.categories != new.model.categories
    bundle = new.model.bundle if old.model.bundle != new.model.bundle else None
    live = {"categories": None, "bundle": ""}
    if (categories_changed or bundle) and "model" in sections and (old.model.model_copy(update=live)
                                                                  == new.model.model_copy(update=live)):
        sections = tuple(s for s in sections if s != "model")
        categories_changed = categories_changed and bundle is None  # a swap loads the new list with the bundle
    else:
        categories_changed, bundle = False, None
    return ReloadPlan(remove, add, tuple(restart), tuple(enable), tuple(disable), tuple(thresholds), sections,
                      categories_changed, new.model.categories, bundle)


@dataclass
class ReloadReport:
    applied: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    restart_needed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "errors": self.errors, "restart_needed": self.restart_needed}


def _restart(control: ServiceControl, camera: CameraConfig) -> None:
    control.remove_camera(camera.name)
    control.add_camera(camera)


def apply_plan(plan: ReloadPlan, control: ServiceControl) -> ReloadReport:
    """Apply a plan step by step; a failing step is reported and the others still run."""
    rep = ReloadReport(restart_needed=list(plan.restart_needed))

    def step(what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
            rep.applied.append(what)
        except (DsanetError, ValueError, KeyError, OSError) as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            rep.errors.append(f"{what}: {redact(str(msg))}")

    for n in plan.remove:
        step(f"remove camera {n!r}", functools.partial(control.remove_camera, n))
    for c in plan.restart:
        step(f"restart camera {c.name!r}", functools.partial(_restart, control, c))
    for c in plan.add:
        step(f"add camera {c.name!r} ({redact(c.url)})", functools.partial(control.add_camera, c))
    for n in plan.enable:
        step(f"enable camera {n!r}", functools.partial(control.set_camera_enabled, n, True))
    for n in plan.disable:
        step(f"disable camera {n!r}", functools.partial(control.set_camera_enabled, n, False))
    for n, on, off in plan.thresholds:
        step(f"camera {n!r}: on_threshold {on:g}, off_threshold {off:g}",
             functools.partial(control.set_thresholds, n, on, off))
    if plan.bundle is not None:
        from stream.feedback.control import FeedbackControl

        if not isinstance(control, FeedbackControl):
            rep.restart_needed.append("model")
        else:
            try:
                res = control.swap_bundle(plan.bundle)
                rep.applied.append(f"model.bundle: now {res['bundle']['name']} (head {res['bundle']['id']})"
                                   + ("; the encoder differs: windows restarted" if res["encoder_changed"] else ""))
            except DsanetError as exc:
                rep.errors.append(f"model.bundle: {redact(str(exc))}")
    if plan.categories_changed:
        edit = plan.categories.to_edit() if plan.categories is not None else CategoryEdit()

        try:
            cats = control.set_categories(edit)
            rep.applied.append("model.categories: " + ", ".join(cats.names))
        except DsanetError as exc:
            rep.errors.append(f"model.categories: {redact(str(exc))}")
    return rep


class ChangeError(DsanetError):
    """A runtime change was refused; ``problems`` lists why (config-file style lines), ``status`` the HTTP code."""

    def __init__(self, message: str, problems: list[str] | None = None, status: int = 422) -> None:
        super().__init__(message)
        self.problems = problems or [message]
        self.status = status


@dataclass(frozen=True)
class Change:
    """The outcome of one API change: whether it reached the deployment file, and why not."""

    persisted: bool
    note: str | None = None


class LiveConfig:
    """The deployment as applied to a running service; the one place that changes it at run time.

    One lock orders API changes and reloads, so a reload never sees half of an API change.
    """

    def __init__(self, cfg: DeploymentConfig, control: ServiceControl, path: str | Path | None = None) -> None:
        self._cfg = cfg
        self.control = control
        self.path = Path(path).resolve() if path is not None else None
        self.file = ConfigFile(self.path) if self.path is not None else None
        self._lock = threading.Lock()

    @property
    def cfg(self) -> DeploymentConfig:
        return self._cfg

    @property
    def persistent(self) -> bool:
        return self.file is not None and self.file.writable

    @property
    def persist_note(self) -> str | None:
        """Why API changes last only until restart, or None when they are written back."""
        if self.file is None:
            return "no deployment file: changes last until restart"
        if not self.file.writable:
            return f"{self.path} is read-only: changes last until restart"
        return None

    def _base(self) -> Path | None:
        return self.path.parent if self.path is not None else None

    def _write(self, edit: Callable[[ConfigFile], None]) -> Change:
        if self.file is None or not self.file.writable:
            return Change(False, self.persist_note)
        try:
            edit(self.file)
        except (WritebackError, ConfigError) as exc:
            log.error("write-back: %s", exc)
            return Change(False, f"not written back: {exc}")
        return Change(True)

    def _camera(self, name: str) -> tuple[int, CameraConfig]:
        for i, c in enumerate(self._cfg.cameras):
            if c.name == name:
                return i, c
        raise ChangeError(f"camera {name!r} is not configured", status=404)

    def _replace(self, cameras: list[CameraConfig]) -> None:
        self._cfg = self._cfg.model_copy(update={"cameras": cameras})

    # ---------------------------------------------------------------------------------- API changes
    def add_camera(self, raw: Any) -> tuple[CameraConfig, Change]:
        with self._lock:
            try:
                cam = parse_camera(raw, self._cfg, self._base())
            except ConfigError as exc:
                raise ChangeError("invalid camera", exc.problems) from None
            try:
                self.control.add_camera(cam)
            except ValueError as exc:
                raise ChangeError(str(exc), status=409) from None
            self._replace([*self._cfg.cameras, cam])
            return cam, self._write(lambda f: f.add_camera(dict(raw)))

    def remove_camera(self, name: str) -> Change:
        with self._lock:
            i, _ = self._camera(name)
            try:
                self.control.remove_camera(name)
            except KeyError:
                raise ChangeError(f"camera {name!r} is not running", status=404) from None
            self._replace([c for c in self._cfg.cameras if c.name != name])
            return self._write(lambda f: f.remove_camera(name))

    def set_enabled(self, name: str, enabled: bool) -> Change:
        with self._lock:
            i, cam = self._camera(name)
            self.control.set_camera_enabled(name, enabled)
            cams = list(self._cfg.cameras)
            cams[i] = cam.model_copy(update={"enabled": enabled})
            self._replace(cams)
            return self._write(lambda f: f.set_enabled(name, enabled))

    def set_thresholds(self, name: str, on: float | None, off: float | None) -> Change:
        with self._lock:
            i, cam = self._camera(name)
            cur = self._cfg.events_for(cam)
            new_on = cur.on_threshold if on is None else on
            new_off = cur.off_threshold if off is None else off
            problems = []
            for key, v in (("on_threshold", new_on), ("off_threshold", new_off)):
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= float(v) <= 1.0:
                    problems.append(f"cameras[{i}].events.{key}: must be a number between 0 and 1, not {v!r}")
            if not problems and new_off > new_on:
                problems.append(f"cameras[{i}].events: off_threshold ({new_off:g}) must be <= on_threshold "
                                f"({new_on:g})")
            if problems:
                raise ChangeError(f"camera {name!r}: invalid thresholds", problems)
            try:
                self.control.set_thresholds(name, float(new_on), float(new_off))
            except ValueError as exc:
                raise ChangeError(str(exc)) from None
            override = (cam.events.model_dump() if cam.events is not None else {})
            override.update(on_threshold=float(new_on), off_threshold=float(new_off))
            cams = list(self._cfg.cameras)
            cams[i] = cam.model_copy(update={"events": EventsOverride(**override)})
            self._replace(cams)
            return self._write(lambda f: f.set_thresholds(name, float(new_on), float(new_off)))

    def swap_bundle(self, control: Any, path: str) -> dict[str, Any]:
        """API: switch to another bundle (a relative path is taken from the deployment file's folder).

        Once the swap succeeded, ``model.bundle`` is written back into the deployment file as sent (like a
        camera change: only that key changes, the file is validated whole and replaced atomically), so a
        restart or a later ``dsanet reload`` keeps the new bundle instead of switching back. Not written
        (``persisted: false`` with the reason in ``note``): no file, a read-only file, or ``model.bundle``
        given there as an ``${ENV}`` reference."""
        p = Path(path)
        if not p.is_absolute() and self._base() is not None:
            p = self._base() / p  # type: ignore[operator]
        with self._lock:
            res = dict(control.swap_bundle(str(p)))
            self._cfg = self._cfg.model_copy(update={"model": self._cfg.model.model_copy(update={"bundle": str(p)})})
            change = self._write(lambda f: f.set_model_bundle(str(path)))
        res["persisted"] = change.persisted
        res["note"] = None if change.persisted else (
            f"{change.note}; set model.bundle in the deployment file to keep this bundle after a restart")
        return res

    # ------------------------------------------------------------------------------------- reload
    def reload(self) -> ReloadReport:
        """Re-read the deployment file and apply only the difference."""
        if self.path is None:
            return ReloadReport(errors=["no deployment file to reload (the service runs from arguments)"])
        with self._lock:
            try:
                new = load_config(self.path)
            except ConfigError as exc:
                return ReloadReport(errors=[str(exc)])
            plan = plan_reload(self._cfg, new)
            rep = apply_plan(plan, self.control)
            if not rep.errors:
                self._cfg = new
            else:  # keep what did apply: cameras as they now run, other sections as they were
                self._cfg = self._merge_applied(new, plan, rep)
        for line in rep.applied:
            log.info("reload: %s", line)
        for line in rep.errors:
            log.error("reload: %s", line)
        if rep.restart_needed:
            log.warning("reload: changes to %s need a restart; they are not applied", ", ".join(rep.restart_needed))
        return rep

    def _merge_applied(self, new: DeploymentConfig, plan: ReloadPlan, rep: ReloadReport) -> DeploymentConfig:
        running = {s.name for s in self.control.camera_snapshots()}
        cams = [c for c in new.cameras if c.name in running]
        cams += [c for c in self._cfg.cameras if c.name in running and c.name not in {x.name for x in cams}]
        return self._cfg.model_copy(update={"cameras": cams})
