"""HTML page assembly for the run and compare reports: escaped text, tables, embedded images
(pages are written by :func:`icdistill.files.write_text_atomic`).

Pages are self-contained: inline CSS, no script, every image embedded as a base64 ``data:`` URI,
so a page opens from disk without network and still shows everything after it is moved.
Everything that comes from a file (names, keys, config text) goes through :func:`esc`; only
markup built here is wrapped in :class:`Raw`.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any, Iterable, Sequence


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d232a;
       background: #f6f7f9; }
header { background: #1d3557; color: #fff; padding: 14px 28px; }
header h1 { margin: 0; font-size: 1.4em; }
header p { margin: 4px 0 0; opacity: .85; font-size: .9em; }
nav { padding: 8px 28px; background: #e7ecf3; font-size: .9em; position: sticky; top: 0; }
nav a { margin-right: 14px; color: #1d3557; text-decoration: none; }
main { padding: 8px 28px 40px; }
section { background: #fff; border: 1px solid #dde2ea; border-radius: 6px; margin: 16px 0;
          padding: 6px 18px 14px; overflow-x: auto; }
h2 { font-size: 1.15em; color: #1d3557; }
table { border-collapse: collapse; margin: 8px 0; font-size: .9em; }
th, td { border: 1px solid #d5dbe3; padding: 3px 9px; }
th { background: #eef2f7; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
p.note { color: #5b6675; font-size: .88em; }
.warn { color: #9b2c2c; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; }
.gallery figure { margin: 0; }
.gallery figcaption, .plot figcaption { font-size: .8em; color: #5b6675; }
.gallery img { max-width: 420px; height: auto; border: 1px solid #dde2ea; }
.gallery.wide img { max-width: min(100%, 1100px); }
img.plot { max-width: 100%; height: auto; }
pre { background: #f3f5f8; padding: 10px; overflow: auto; font-size: .82em; max-height: 480px; }
"""


class Raw(str):
    """Markup built by this package: inserted as is (everything else is escaped)."""


def esc(value: Any) -> Raw:
    """``value`` as HTML text (``Raw`` passes through)."""
    return value if isinstance(value, Raw) else Raw(html.escape(str(value), quote=True))


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell's text: numbers with ``digits`` decimals, None/NaN as ``n/a``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # Below 1 three significant digits, so 0.0123 s/iter or an AUROC do not print as 0.01.
        return f"{value:.3g}" if 0 < abs(value) < 1 else f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[Any], rows: Iterable[Sequence[Any]], *, css_class: str = "") -> Raw:
    """A table; a cell that is a number (int/float/None) is right-aligned and formatted by
    :func:`fmt`, any other cell is escaped text (or ``Raw``)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            if cell is None or (isinstance(cell, (int, float)) and not isinstance(cell, bool)):
                cells.append(f'<td class="num">{esc(fmt(cell))}</td>')
            else:
                cells.append(f"<td>{esc(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cls = f' class="{esc(css_class)}"' if css_class else ""
    return Raw(f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image(png: bytes, alt: str, *, css_class: str = "plot") -> Raw:
    """An embedded PNG."""
    return Raw(f'<img class="{esc(css_class)}" alt="{esc(alt)}" src="{data_uri(png)}">')


def gallery(paths: Sequence[Path], *, captions: Sequence[str] | None = None, wide: bool = False) -> Raw:
    """PNG files side by side, embedded, each captioned (default: its file name); ``wide``
    lets each be up to the page's width (multi-panel pictures such as attention overlays)."""
    figures = []
    for i, path in enumerate(paths):
        caption = captions[i] if captions is not None else path.name
        figures.append(f"<figure>{image(path.read_bytes(), caption, css_class='shot')}"
                       f"<figcaption>{esc(caption)}</figcaption></figure>")
    return Raw(f'<div class="gallery{" wide" if wide else ""}">{"".join(figures)}</div>')


def note(text: Any, *, warn: bool = False) -> Raw:
    return Raw(f'<p class="note{" warn" if warn else ""}">{esc(text)}</p>')


def pre(text: str) -> Raw:
    return Raw(f"<pre>{esc(text)}</pre>")


def details(summary: str, body: str) -> Raw:
    return Raw(f"<details><summary>{esc(summary)}</summary>{body}</details>")


def section(anchor: str, title: str, body: Iterable[str]) -> tuple[str, str, Raw]:
    """(anchor, title, markup) of one page section; :func:`page` lists them in its nav bar."""
    return anchor, title, Raw(f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{"".join(body)}</section>')


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document: header, a nav bar of the sections, the sections."""
    nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'  # no favicon request: the page needs no file beside it
        f"<style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>"
        f"<nav>{nav}</nav><main>{''.join(s for _, _, s in sections)}</main></body></html>\n"
    )
