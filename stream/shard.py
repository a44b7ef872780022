"""Which cameras a worker watches when several workers share one camera list: rendezvous hashing.

Each camera goes to the worker with the highest weight ``H(camera, worker)`` (highest-random-weight,
or rendezvous, hashing). ``H`` is a stable hash (BLAKE2b of the UTF-8 camera name and the worker index),
so every worker, every restart and ``dsanet shard-plan`` compute the same assignment from the same
camera list with no coordination. Python's ``hash()`` is never used: it is salted per process.

Why rendezvous and not ``crc(name) % N``: going from N to N+1 workers, only the cameras whose highest
weight is now the new worker's move (about 1/(N+1) of them, measured by ``tests/test_shard.py`` and
``dsanet shard-plan``), where ``mod N`` moves about N/(N+1) of them, which would reconnect almost every
camera of the site on a scale-out.

Where a worker learns its index (first match wins): ``--shard i/N``; ``SHARD_INDEX`` and
``SHARD_COUNT``; ``SHARD_COUNT`` plus the ordinal at the end of the host name (a Kubernetes StatefulSet
pod ``dsanet-worker-2`` is index 2); the config's ``shard`` section. Without any, one worker takes all.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import DsanetError

ENV_INDEX, ENV_COUNT = "SHARD_INDEX", "SHARD_COUNT"
_ORDINAL = re.compile(r"-(\d+)$")
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


class ShardError(DsanetError):
    """A shard setting is malformed or out of range."""


@dataclass(frozen=True)
class Shard:
    """Worker ``index`` of ``count`` (0-based); ``source`` says where it came from (for the log line)."""

    index: int = 0
    count: int = 1
    source: str = "default"

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ShardError(f"shard count must be >= 1, got {self.count} (from {self.source})")
        if not 0 <= self.index < self.count:
            raise ShardError(f"shard index {self.index} is outside 0..{self.count - 1} (from {self.source})")

    def owns(self, camera: str) -> bool:
        return owner(camera, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def weight(camera: str, worker: int) -> int:
    """The rendezvous weight of ``camera`` on ``worker``: 64 bits of BLAKE2b, the same in every process."""
    h = hashlib.blake2b(camera.encode("utf-8"), digest_size=8, person=b"dsanet-shard")
    h.update(b"\x00")
    h.update(int(worker).to_bytes(4, "big"))
    return int.from_bytes(h.digest(), "big")


def owner(camera: str, workers: int) -> int:
    """The worker index (0..workers-1) that watches ``camera``."""
    if workers < 1:
        raise ShardError(f"worker count must be >= 1, got {workers}")
    best, best_w = 0, -1
    for i in range(workers):
        w = weight(camera, i)
        if w > best_w:  # ties (2^-64) go to the lower index, deterministically
            best, best_w = i, w
    return best


def assign(cameras: Iterable[str], workers: int) -> dict[str, int]:
    """camera -> worker index for every camera."""
    return {c: owner(c, workers) for c in cameras}


def mod_owner(camera: str, workers: int) -> int:
    """The naive ``stable_hash(name) mod N`` placement, kept only to show what rendezvous avoids."""
    return weight(camera, 0) % workers


def moved(before: Mapping[str, int], after: Mapping[str, int]) -> list[str]:
    """Cameras whose worker differs between two assignments (of the same cameras)."""
    return sorted(c for c in before if c in after and before[c] != after[c])


def parse_spec(spec: str, source: str = "--shard") -> Shard:
    """``"i/N"`` -> ``Shard(i, N)``, or a one-line ``ShardError``."""
    m = _SPEC.match(spec or "")
    if not m:
        raise ShardError(f"{source} {spec!r} is not INDEX/COUNT (e.g. 0/2 for the first of two workers)")
    return Shard(int(m[1]), int(m[2]), source)


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw.strip())
    except ValueError:
        raise ShardError(f"environment variable {name}={raw!r} is not an integer") from None


def resolve(cli: str | None = None, config_index: int | None = None, config_count: int | None = None,
            env: Mapping[str, str] | None = None, hostname: str | None = None) -> Shard:
    """This worker's shard from (in order) the command line, the environment, the host-name ordinal, the config."""
    if cli:
        return parse_spec(cli)
    env = os.environ if env is None else env
    count, index = _env_int(env, ENV_COUNT), _env_int(env, ENV_INDEX)
    if index is not None and count is None:
        raise ShardError(f"{ENV_INDEX} is set but {ENV_COUNT} is not: set both (or neither)")
    if count is not None:
        if index is not None:
            return Shard(index, count, f"{ENV_INDEX}/{ENV_COUNT}")
        host = hostname if hostname is not None else socket.gethostname()
        m = _ORDINAL.search(host.split(".")[0])
        if not m:
            raise ShardError(f"{ENV_COUNT}={count} is set but neither {ENV_INDEX} nor a StatefulSet ordinal in "
                             f"the host name {host!r} (e.g. dsanet-worker-2) gives this worker's index")
        return Shard(int(m[1]), count, f"host name {host!r} ordinal, {ENV_COUNT}")
    if config_count is not None:
        return Shard(config_index or 0, config_count, "config shard section")
    return Shard(0, 1, "default (one worker)")


def select(cameras: Sequence[str], shard: Shard) -> list[str]:
    """The cameras of ``cameras`` that this shard watches, in their config order."""
    return [c for c in cameras if shard.owns(c)]


def apply_shard(cfg: Any, cli: str | None = None) -> tuple[Any, Shard]:
    """The deployment config with only this worker's cameras enabled, and the shard it resolved.

    The other cameras stay in the config, disabled, so names, overrides and the assignment stay the
    same on every worker. A worker that owns no enabled camera is a configuration error (more workers
    than cameras), reported in one line.

    Each worker keeps its feedback site data in a folder of its own, ``<feedback.directory>/shard-<index>``:
    workers sharing one folder would each evict, index and rewrite the other's files (every store keeps
    its own ``examples.jsonl`` and disk bound). The index, not the count, names it, so a worker restarted
    with the same index finds its marks again; ``dsanet finetune --site-data`` takes one shard's folder.
    """
    sc = cfg.shard
    shard = resolve(cli, sc.index if sc is not None else None, sc.count if sc is not None else None)
    if shard.count == 1:
        return cfg, shard
    cams = [c if not c.enabled or shard.owns(c.name) else c.model_copy(update={"enabled": False})
            for c in cfg.cameras]
    mine = [c.name for c in cams if c.enabled]
    if not mine:
        total = sum(1 for c in cfg.cameras if c.enabled)
        raise ShardError(f"shard {shard} (from {shard.source}) owns none of the {total} enabled camera(s): "
                         f"see `dsanet shard-plan -c FILE --workers {shard.count}`")
    update: dict[str, Any] = {"cameras": cams}
    fb = cfg.feedback
    if fb.enabled:
        update["feedback"] = fb.model_copy(update={"directory": shard_directory(fb.directory, shard)})
    return cfg.model_copy(update=update), shard


def shard_directory(directory: str, shard: Shard) -> str:
    """``directory/shard-<index>`` for a worker of several (the folder itself for a single worker)."""
    if shard.count == 1:
        return directory
    return os.path.join(directory, f"shard-{shard.index}")
