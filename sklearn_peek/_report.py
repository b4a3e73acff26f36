"""A small self-contained HTML report writer (private).

The ``sklearn-peek`` command builds a :class:`Report` section by section
(text, key/value summaries, tables, figures with a sentence saying what each
one means) and writes ``report.html``. Figures are embedded as base64 PNG by
default, so the report is one file that can be mailed or archived; with
``embed=False`` they are written as PNG files in a ``figures/`` folder beside
it. :func:`write_json` writes the machine-readable results next to it.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import re
from pathlib import Path

import numpy as np

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222;
       line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em;
     margin-top: 1.8em; }
p.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td.txt, th.txt { text-align: left; }
figure { margin: 1em 0 1.6em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #333; font-size: 0.95em; margin-top: 0.3em; max-width: 900px; }
dl.kv { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dl.kv dt { font-weight: 600; }
dl.kv dd { margin: 0; }
.note { color: #555; font-size: 0.9em; }
div.warn { border-left: 4px solid #d9a400; background: #fff8e1;
           padding: 0.3em 1em; margin: 0.6em 0; }
div.warn ul { margin: 0.3em 0; padding-left: 1.2em; }
"""


def figure_png(fig, *, dpi=110):
    """PNG bytes of a matplotlib figure (closed afterwards to free memory)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def _slug(text):
    s = re.sub(r"[^A-Za-z0-9]+", "-", str(text)).strip("-").lower()
    return s or "figure"


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return "n/a"
        if math.isinf(v):
            return str(v)
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3g}"
        return f"{v:.3f}".rstrip("0").rstrip(".") if v != int(v) else str(int(v))
    return str(v)


def _rows(table):
    """(columns, rows) from a DataFrame, a dict of lists, or a list of dicts."""
    if hasattr(table, "columns") and hasattr(table, "itertuples"):
        cols = [str(c) for c in table.columns]
        return cols, [list(r) for r in table.itertuples(index=False)]
    if isinstance(table, dict):
        cols = [str(c) for c in table]
        n = max((len(v) for v in table.values()), default=0)
        return cols, [[table[c][i] for c in table] for i in range(n)]
    table = list(table)
    cols = []
    for row in table:
        for k in row:
            if str(k) not in cols:
                cols.append(str(k))
    return cols, [[row.get(c) for c in cols] for row in table]


class Report:
    """Collects sections and writes them as one HTML page.

    Parameters
    ----------
    title : str
        Page title and top heading.
    subtitle : str, optional
        One line under the title (e.g. what was analysed, when).
    """

    def __init__(self, title, *, subtitle=None):
        self.title = title
        self.subtitle = subtitle
        self._parts = []  # (kind, payload)
        self._n_fig = 0

    def add_heading(self, text):
        self._parts.append(("h2", text))

    def add_text(self, text):
        """A paragraph of plain text (escaped)."""
        self._parts.append(("p", text))

    def add_html(self, markup):
        """A block of HTML written by the library itself (not escaped: never
        pass user-supplied text here)."""
        self._parts.append(("html", markup))

    def add_notes(self, notes, *, intro=None):
        """A highlighted box listing ``notes`` (plain text, escaped), e.g.
        the warnings printed while the report was made."""
        self._parts.append(("notes", (intro, [str(n) for n in notes])))

    def add_key_values(self, items):
        """A definition list from a dict or (key, value) pairs."""
        items = list(items.items()) if isinstance(items, dict) else list(items)
        self._parts.append(("kv", items))

    def add_table(self, table, *, caption=None, text_columns=None):
        """A table from a DataFrame, a dict of lists or a list of dicts."""
        cols, rows = _rows(table)
        self._parts.append(("table", (cols, rows, caption, set(text_columns or ()))))

    def add_figure(self, fig, caption, *, name=None, dpi=110):
        """A matplotlib figure (or PNG bytes) and the sentence saying what it shows."""
        png = fig if isinstance(fig, (bytes, bytearray)) else figure_png(fig, dpi=dpi)
        self._n_fig += 1
        name = f"{self._n_fig:02d}-{_slug(name or caption[:40])}"
        self._parts.append(("fig", (bytes(png), caption, name)))

    def to_html(self, *, figure_dir=None, figure_href=None):
        """The page as a string; figures as data URIs unless ``figure_dir`` is given."""
        esc = html.escape
        out = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{esc(self.title)}</title>",
            f"<style>{_CSS}</style></head><body>",
            f"<h1>{esc(self.title)}</h1>",
        ]
        if self.subtitle:
            out.append(f'<p class="sub">{esc(self.subtitle)}</p>')
        for kind, payload in self._parts:
            if kind == "h2":
                out.append(f"<h2>{esc(payload)}</h2>")
            elif kind == "p":
                out.append(f"<p>{esc(payload)}</p>")
            elif kind == "html":
                out.append(payload)
            elif kind == "notes":
                intro, notes = payload
                out.append('<div class="warn">')
                if intro:
                    out.append(f"<p>{esc(intro)}</p>")
                out.append(
                    "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>"
                )
                out.append("</div>")
            elif kind == "kv":
                out.append('<dl class="kv">')
                for k, v in payload:
                    out.append(f"<dt>{esc(str(k))}</dt><dd>{esc(_fmt(v))}</dd>")
                out.append("</dl>")
            elif kind == "table":
                cols, rows, caption, text_cols = payload
                out.append("<table>")
                if caption:
                    out.append(f"<caption>{esc(caption)}</caption>")
                # A column of text is left-aligned, header included.
                txt = {
                    c
                    for j, c in enumerate(cols)
                    if c in text_cols
                    or (rows and all(isinstance(r[j], str) for r in rows))
                }
                out.append(
                    "<thead><tr>"
                    + "".join(
                        f'<th class="txt">{esc(c)}</th>'
                        if c in txt
                        else f"<th>{esc(c)}</th>"
                        for c in cols
                    )
                    + "</tr></thead><tbody>"
                )
                for row in rows:
                    cells = []
                    for c, v in zip(cols, row):
                        is_txt = c in text_cols or isinstance(v, str)
                        cls = ' class="txt"' if is_txt else ""
                        cells.append(f"<td{cls}>{esc(_fmt(v))}</td>")
                    out.append("<tr>" + "".join(cells) + "</tr>")
                out.append("</tbody></table>")
            elif kind == "fig":
                png, caption, name = payload
                if figure_dir is None:
                    src = "data:image/png;base64," + base64.b64encode(png).decode(
                        "ascii"
                    )
                else:
                    path = Path(figure_dir) / f"{name}.png"
                    path.write_bytes(png)
                    src = f"{figure_href}/{name}.png"
                out.append(
                    f'<figure><img src="{src}" alt="{esc(caption)}">'
                    f"<figcaption>{esc(caption)}</figcaption></figure>"
                )
        stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        out.append(
            f'<p class="note">Written by sklearn_peek on {stamp}.</p></body></html>'
        )
        return "\n".join(out)

    def write(self, out_dir, *, filename="report.html", embed=True):
        """Write the page into ``out_dir`` (created if needed); return its path."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if embed:
            text = self.to_html()
        else:
            fig_dir = out_dir / "figures"
            fig_dir.mkdir(exist_ok=True)
            text = self.to_html(figure_dir=fig_dir, figure_href="figures")
        path = out_dir / filename
        path.write_text(text, encoding="utf-8")
        return path


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "to_dict") and hasattr(obj, "columns"):
        return _jsonable(obj.to_dict(orient="records"))
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(obj, (Path,)):
        return str(obj)
    if obj is None or isinstance(obj, (int, str)):
        return obj
    return str(obj)


def write_json(path, data):
    """Write ``data`` as indented JSON (NumPy values converted, NaN -> null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(data), indent=2), encoding="utf-8")
    return path
