"""``dsanet categories BUNDLE [--add "Name: prompt; prompt"]... [--rename Old=New] [--drop Name]``.

Prints the class list a category edit gives and, for each added class, the cosine similarity of its
text features to every other class, warning about near-duplicates: two classes whose text features
nearly coincide split the probability mass of the snippets that match them (see docs/categories.md).
Runs the bundle's text.onnx on ONNX Runtime; no torch.
"""

from __future__ import annotations

import argparse


def _handle(args: argparse.Namespace) -> int:
    from engine.bundle import load_bundle
    from engine.categories import NEAR_DUPLICATE_COSINE, CategoryEdit, build, parse_add, similarities
    from engine.errors import InputError

    rename = {}
    for spec in args.rename:
        old, sep, new = spec.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise InputError(f"--rename {spec!r}: expected Old=New")
        rename[old.strip()] = new.strip()
    edit = CategoryEdit(add=tuple(parse_add(a) for a in args.add), rename=rename,
                        drop=tuple(d.strip() for d in args.drop), where="")
    bundle = load_bundle(args.bundle)
    cats = build(bundle, edit)
    print(f"bundle {bundle.name}: {len(cats)} categories" + (" [TINY RANDOM CLIP: similarities mean nothing]"
                                                               if bundle.source.tiny_clip else ""))
    for i, (key, name, added, prompts) in enumerate(zip(cats.keys, cats.names, cats.added, cats.prompts,
                                                        strict=True)):
        note = "added" if added else (f"key {key}" if key != name else "bundle")
        print(f"  {i:>2}: {name} ({note}; {len(prompts)} prompt{'s' if len(prompts) != 1 else ''})")
    rows = similarities(cats)
    if rows:
        print(f"text-feature cosine of each added category to its {args.nearest} nearest others "
              f"(near-duplicate at >= {NEAR_DUPLICATE_COSINE}):")
    warnings = 0
    for new in [n for n, a in zip(cats.names, cats.added, strict=True) if a]:
        mine = [r for r in rows if r[0] == new]
        for i, (_, other, cos) in enumerate(mine):
            dup = cos >= NEAR_DUPLICATE_COSINE
            if i < args.nearest or dup:
                print(f"  {new} ~ {other}: {cos:.4f}" + ("  WARNING: near-duplicate" if dup else ""))
            warnings += dup
    if warnings:
        print(f"warning: {warnings} near-duplicate pair(s): such classes split the probability mass of the snippets "
              "that match them; merge them (one category, several prompts) or reword")
    return 0


def register(subparsers) -> None:  # noqa: ANN001
    p = subparsers.add_parser(
        "categories", help="show the class list after adding, renaming or dropping categories in words",
        description="Resolve a category edit against a bundle (with text.onnx) and print the class list and "
                    "the cosine similarity of each added category to the others, warning about near-duplicates.")
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--add", action="append", default=[], metavar="'NAME: PROMPT; PROMPT'",
                   help="add a category described by one or more prompts (repeatable)")
    p.add_argument("--rename", action="append", default=[], metavar="OLD=NEW", help="rename a category (repeatable)")
    p.add_argument("--drop", action="append", default=[], metavar="NAME", help="drop a category (repeatable)")
    p.add_argument("--nearest", type=int, default=3, metavar="N",
                   help="similarities shown per added category (near-duplicates are always shown; default 3)")
    p.set_defaults(func=_handle)
