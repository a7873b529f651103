"""The one small HTML kit of the toolkit's pages (report, learning curves, data audit).

Pages are self-contained: one file, inline CSS, pictures as base64 PNGs, no script and
no external link, so they open offline and can be mailed. Table cells and section bodies
are HTML: escape any text with :func:`esc` before putting it in.
"""

from __future__ import annotations

import base64
import html as _html
import math
from typing import Any, Iterable, Optional, Sequence

__all__ = ["CSS", "esc", "fmt", "table", "png_tag", "note", "section", "page"]

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1280px;color:#222;padding:0 16px}
h1{font-size:24px;margin-bottom:4px} h2{font-size:19px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
.scroll{overflow-x:auto;max-width:100%} table{border-collapse:collapse;margin:8px 0;font-size:14px} th,td{border:1px solid #ddd;padding:4px 9px;text-align:right}
th{background:#f4f4f4} .l{text-align:left} td.l{white-space:nowrap} .muted{color:#777;font-size:13px}
td.msg{text-align:left;font-family:monospace;font-size:12px}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:6px 12px;margin:6px 0}
.big{font-size:30px;font-weight:600} .swatch{display:inline-block;width:12px;height:12px;border:1px solid #555;margin-right:6px;vertical-align:middle}
.bar{height:14px;display:inline-block;vertical-align:middle;border:1px solid #555;min-width:1px}
.ok{color:#2a7d2a;font-weight:600} .bad{color:#b03020;font-weight:600}
img.fig{max-width:100%;border:1px solid #eee}
"""


def esc(text: Any) -> str:
    """``text`` as HTML text (``<``, ``&`` and quotes escaped)."""
    return _html.escape(str(text))


def fmt(x: Any, spec: str = ".4f") -> str:
    """A number for a table cell: floats with ``spec``, None / NaN as a dash."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return format(x, spec)
    return str(x)


def table(header: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1,
          cls: Optional[Sequence[str]] = None) -> str:
    """An HTML table: the first ``left`` columns left-aligned, the rest right-aligned (numbers).

    ``cls``: a CSS class per column (``""`` = the default), e.g. ``msg`` for long messages.
    """
    def klass(i: int) -> str:
        if cls and i < len(cls) and cls[i]:
            return cls[i]
        return "l" if i < left else ""

    def cell(tag: str, i: int, content: str) -> str:
        k = klass(i)
        if tag == "th" and k:  # a column with its own class (e.g. msg) is text: its header aligns left
            k = "l"
        return f"<{tag} class='{k}'>{content}</{tag}>" if k else f"<{tag}>{content}</{tag}>"

    th = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(r)) + "</tr>" for r in rows)
    # scrolled sideways in a narrow window rather than running off the page's edge (a 10-column class table at 800 px)
    return f"<div class='scroll'><table><tr>{th}</tr>{body}</table></div>"


def png_tag(png: bytes, alt: str) -> str:
    """PNG bytes as an inline ``<img>``."""
    return f"<img class='fig' alt='{esc(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def note(html_text: str) -> str:
    """A small grey paragraph (``html_text`` is HTML)."""
    return f"<p class='muted'>{html_text}</p>"


def section(heading: str, body: str) -> str:
    return f"<h2>{esc(heading)}</h2>\n{body}"


def page(title: str, body: str, subtitle: Optional[str] = None, warnings: Iterable[str] = ()) -> str:
    """A whole page: ``title`` as heading, an optional grey ``subtitle`` (text), warning boxes (text), then ``body`` (HTML)."""
    sub = note(esc(subtitle)) if subtitle else ""
    warn = "".join(f"<div class='warn'>{esc(w)}</div>" for w in warnings)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>{sub}{warn}\n{body}\n</body></html>")
