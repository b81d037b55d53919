"""Class names that are one class spelled two ways, and merging them (``data.class_aliases``).

A label typed once as ``"Rbc "`` beside 173 ``"RBC"`` makes a class of its own: nothing in the
annotations says they are the same. Names that differ only in case, surrounding or inner spaces
or punctuation (:func:`class_key`) are reported, with their annotation counts, by every reader
(the data report of a run, ``icdistill stats``); ``data.class_aliases`` (alias -> canonical
name) merges them. The names are left as they are unless an alias says otherwise: this project
does not guess which spelling is meant.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping

from ..errors import ConfigError, DataError

__all__ = ["apply_class_aliases", "check_class_aliases", "class_key", "describe_similar",
           "similar_class_names"]


def class_key(name: str) -> str:
    """What two spellings of one class share: the letters and digits, case-folded
    (``"Red blood-cell "`` -> ``"redbloodcell"``)."""
    return "".join(ch for ch in str(name).casefold() if ch.isalnum())


def check_class_aliases(aliases: Mapping[str, str]) -> dict[str, str]:
    """``data.class_aliases`` checked: strings to strings, no alias mapping to another alias
    (the canonical name must be final) and none to itself.

    Raises:
        ConfigError: naming the offending entry.
    """
    out: dict[str, str] = {}
    for alias, name in dict(aliases).items():
        if not isinstance(alias, str) or not isinstance(name, str):
            raise ConfigError(f"config key 'data.class_aliases' maps class names to class names; "
                              f"got {alias!r}: {name!r}")
        if alias == name:
            raise ConfigError(f"config key 'data.class_aliases': {alias!r} maps to itself; "
                              f"remove the entry")
        out[alias] = name
    for alias, name in out.items():
        if name in out:
            raise ConfigError(f"config key 'data.class_aliases': {alias!r} maps to {name!r}, "
                              f"which is itself an alias (of {out[name]!r}); map {alias!r} to "
                              f"the final name")
    return out


def _annotation_counts(data: dict) -> Counter[Any]:
    """Annotations per category id of a COCO dict."""
    return Counter(a.get("category_id") for a in data["annotations"] if isinstance(a, dict))


def apply_class_aliases(data: dict, aliases: Mapping[str, str], label: str) -> dict[str, dict]:
    """Merge each category named by an alias into its canonical name, in the COCO dict ``data``
    (``categories``, ``annotations``' ``category_id``; modified in place). A canonical name
    without a category of its own is the alias's category renamed.

    Returns:
        ``{alias: {"into": canonical name, "annotations": how many were moved}}`` for each
        alias found in ``data``.

    Raises:
        DataError: a category has no usable name (``label`` starts the message).
    """
    if not aliases:
        return {}
    counts = _annotation_counts(data)
    try:
        id_of = {str(c["name"]): c["id"] for c in data["categories"]}
    except (KeyError, TypeError) as e:
        raise DataError(f"{label}: malformed 'categories' entry ({e!r}); each needs an "
                        f"integer 'id' and a 'name'") from e
    merged: dict[str, dict] = {}
    target: dict[str, Any] = {}  # canonical name -> the category id it keeps
    moved: dict[Any, Any] = {}  # category id -> the id its annotations move to
    renamed: dict[Any, str] = {}  # category id -> its new (canonical) name
    for alias, name in aliases.items():
        if alias not in id_of:
            continue
        merged[alias] = {"into": name, "annotations": int(counts[id_of[alias]])}
        target.setdefault(name, id_of.get(name, id_of[alias]))
        if target[name] == id_of[alias]:
            renamed[id_of[alias]] = name
        else:
            moved[id_of[alias]] = target[name]
    data["categories"] = [{**c, "name": renamed.get(c["id"], c["name"])}
                          for c in data["categories"] if c["id"] not in moved]
    for ann in data["annotations"]:
        if isinstance(ann, dict) and ann.get("category_id") in moved:
            ann["category_id"] = moved[ann["category_id"]]
    return merged


def similar_class_names(data: dict) -> list[dict[str, int]]:
    """Groups of category names of the COCO dict ``data`` sharing a :func:`class_key`, each as
    ``{name: annotation count}`` (most annotated first); empty when every name is distinct."""
    counts = _annotation_counts(data)
    groups: dict[str, dict[str, int]] = {}
    for cat in data["categories"]:
        if isinstance(cat, dict) and isinstance(cat.get("name"), str):
            group = groups.setdefault(class_key(cat["name"]), {})
            group[cat["name"]] = group.get(cat["name"], 0) + int(counts[cat.get("id")])
    return [dict(sorted(g.items(), key=lambda kv: (-kv[1], kv[0])))
            for g in groups.values() if len(g) > 1]


def describe_similar(groups: list[dict[str, int]]) -> str:
    """One line per group for logs and ``icdistill stats``, with the alias that merges it."""
    lines = []
    for group in groups:
        names = list(group)
        spelled = ", ".join(f"{n!r} ({c})" for n, c in group.items())
        aliases = ", ".join(f"{n!r}: {names[0]!r}" for n in names[1:])
        lines.append(f"similar class names {spelled}: if they are one class, set "
                     f"data.class_aliases: {{{aliases}}}")
    return "\n".join(lines)
