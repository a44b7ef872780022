"""The raw labels of a bundle's classes, as the site-data list names them (``Normal``, ``Fighting``...).

A bundle lists its classes by prompt word (``class_names``: ``normal``, ``fighting``, ``roadAccidents``),
in class order; the training lists (``export/data.py`` ``LABEL_MAPS``) name them by raw label in the same
order. The live side never imports ``export``, so the presets' raw labels are repeated here and a test
(tests/test_feedback.py) checks they equal ``LABEL_MAPS``. A bundle of another preset gets its class names
with the first letter upper-cased (``fighting`` -> ``Fighting``; class 0 -> ``Normal``), which is the rule
the UCF labels follow.
"""

from __future__ import annotations

from collections.abc import Sequence

RAW_LABELS: dict[str, tuple[tuple[str, str], ...]] = {
    "ucf": (("Normal", "normal"), ("Abuse", "abuse"), ("Arrest", "arrest"), ("Arson", "arson"),
            ("Assault", "assault"), ("Burglary", "burglary"), ("Explosion", "explosion"),
            ("Fighting", "fighting"), ("RoadAccidents", "roadAccidents"), ("Robbery", "robbery"),
            ("Shooting", "shooting"), ("Shoplifting", "shoplifting"), ("Stealing", "stealing"),
            ("Vandalism", "vandalism")),
    "xd": (("A", "normal"), ("B1", "fighting"), ("B2", "shooting"), ("B4", "riot"), ("B5", "abuse"),
           ("B6", "car accident"), ("G", "explosion")),
    "demo": (("Normal", "normal"), ("Explosion", "explosion"), ("Fighting", "fighting"),
             ("RoadAccidents", "roadAccidents")),
}


def raw_labels(class_names: Sequence[str], preset: str | None) -> tuple[str, ...]:
    """Raw label of each class, in class order (index 0 = the normal label)."""
    table = RAW_LABELS.get(preset or "")
    if table is not None and tuple(p for _, p in table) == tuple(class_names):
        return tuple(r for r, _ in table)
    out = ["Normal"]
    for name in list(class_names)[1:]:
        out.append(name[:1].upper() + name[1:] if name else name)
    return tuple(out)
