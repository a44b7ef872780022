"""Operator feedback and site data (docs/feedback.md).

- ``store``: ``SiteData``, the site-data folder (list.csv, features/, examples.jsonl, pending captures),
  bounded by ``feedback.max_bytes``; marks (``SiteData.mark``, last mark wins).
- ``recorder``: ``FeedbackRecorder``, the per-camera embedding ring, event captures and calm-window
  samples, written by the ``feedback-writer`` thread.
- ``swap``: bundle identity (``BundleIds``, the events' ``bundle`` field) and the hot-swap checks.
- ``labels``: raw labels of a bundle's classes (``Normal``, ``Fighting``...).
- ``control``: ``FeedbackControl``, what the API, the CLI and the MQTT command topic call.
"""

from __future__ import annotations

from stream.feedback.control import FeedbackControl, parse_mark
from stream.feedback.store import KIND_CONFIRMED, KIND_FALSE_ALARM, KIND_NORMAL, FeedbackError, SiteData
from stream.feedback.swap import BundleIds, SwapError

__all__ = ["KIND_CONFIRMED", "KIND_FALSE_ALARM", "KIND_NORMAL", "BundleIds", "FeedbackControl", "FeedbackError",
           "SiteData", "SwapError", "parse_mark"]
