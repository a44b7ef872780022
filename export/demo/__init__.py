"""The embedded demo (``make demo``): its recipe (:mod:`export.demo.recipe`, ``dsanet prepare-demo``) and
the synthetic surveillance videos it trains on and plays as a camera (:mod:`export.demo.video`). Where
its files live is :mod:`engine.demo_paths`, shared with the service's default config."""

from export.demo.recipe import CAMERA_EVENTS, build_demo
from export.demo.video import EVENT_CLASSES, EventSpan, write_video

__all__ = ["CAMERA_EVENTS", "EVENT_CLASSES", "EventSpan", "build_demo", "write_video"]
