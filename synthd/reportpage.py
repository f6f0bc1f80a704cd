"""report.html: the report's dict drawn as one self-contained page. Pure (no files).

The plots are matplotlib figures rendered to SVG and inlined (text kept as text, so the
page stays small and searchable); the rest is HTML tables. Nothing is fetched: no script,
no font, no stylesheet from elsewhere, so the page opens offline and in any browser.
Every string from the data is escaped.
"""

from __future__ import annotations

import datetime as dt
import html
import io
from typing import Any

import matplotlib
from matplotlib.figure import Figure

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:left;vertical-align:top}td.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:1em}.card{border:1px solid #ddd;border-radius:6px;
padding:.6em 1em;min-width:9em}.card b{display:block;font-size:1.5em}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1em}.rec{border:1px solid #ddd;
border-radius:6px;padding:.5em;margin-bottom:.6em;white-space:pre-wrap;font-size:12px}
.rec.rej{border-color:#d99}.muted{color:#777}svg{max-width:100%;height:auto}
"""
SECTIONS = (
    "summary",
    "timeline",
    "rejects",
    "near-duplicates",
    "lengths",
    "diversity",
    "openings",
    "tokens",
    "stages",
    "samples",
)


def render(report: dict[str, Any]) -> str:
    """The whole page for ``report.build``'s dict."""
    job = html.escape(report["job"])
    t = report["totals"]
    when = dt.datetime.fromtimestamp(report["generated"], dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    near = report["near_duplicates"]
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>synthd report: {job}</title><style>{_CSS}</style></head><body>",
        f"<h1>synthd report: {job}</h1><p class='muted'>generated {when}; read in "
        f"{report['read_s']} s</p>",
        _section("summary", "Summary"),
        _cards(
            [
                ("records", t["records"]),
                ("rejects", t["rejects"]),
                ("dead letters", t["dead"]),
                ("pass rate", _pct(report["pass_rate"])),
                ("near-duplicates", _pct(near["share"])),
                ("cost", _usd(report["tokens"]["cost_usd"])),
            ]
        ),
        _section("timeline", "Records, rejects and dead letters over time"),
        _timeline(report["timeline"]),
        _section("rejects", "Rejects by reason and by filter"),
        "<div class='pair'>",
        _bars(report["rejects_by_reason"], "by reason"),
        _bars(report["rejects_by_filter"], "by filter"),
        "</div>",
        _table(["reason", "count"], list(report["rejects_by_reason"].items())),
        _section("near-duplicates", "Near-duplicates"),
        f"<p>{near['count']} near-duplicates rejected: {_pct(near['share'])} of what passed "
        "the other filters.</p>",
        _hist({"estimated similarity": near["similarity"]}),
        _section("lengths", "Lengths"),
        _hist({k.replace("_", " "): v for k, v in report["lengths"].items()}),
        _table(
            ["column", "count", "mean", "p50", "p90", "p99", "max"],
            [
                [
                    k,
                    v["count"],
                    v.get("mean"),
                    v.get("p50"),
                    v.get("p90"),
                    v.get("p99"),
                    v.get("max"),
                ]
                for k, v in report["lengths"].items()
            ],
        ),
        _section("diversity", "Lexical diversity"),
        _diversity(report["diversity"]),
        _section("openings", "Most frequent openings"),
        "<div class='pair'>",
        _bars(dict(report["openings"]), "completions"),
        _bars(dict(report["item_openings"]), "items"),
        "</div>",
        _section("tokens", "Tokens and cost"),
        _table(["key", "value"], list(report["tokens"].items())),
        _section("stages", "Stages"),
        _table(
            ["stage", "records", "rejects", "dead", "pass rate"],
            [
                [s["job"], s["records"], s["rejects"], s["dead"], _pct(s["pass_rate"])]
                for s in report["stages"]
            ],
        ),
        _section("samples", "A sample of kept and rejected records"),
        _samples(report["samples"]),
        "</body></html>",
    ]
    return "\n".join(parts)


def _section(anchor: str, title: str) -> str:
    return f"<h2 id='{anchor}'>{html.escape(title)}</h2>"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _usd(x: float | None) -> str:
    return "no price" if x is None else f"${x:,.2f}"


def _cards(cards: list[tuple[str, Any]]) -> str:
    body = "".join(
        f"<div class='card'><b>{html.escape(str(v))}</b>{html.escape(k)}</div>" for k, v in cards
    )
    return f"<div class='cards'>{body}</div>"


def _table(head: list[str], rows: list[Any]) -> str:
    def cell(v: Any) -> str:
        cls = " class='n'" if isinstance(v, int | float) else ""
        return f"<td{cls}>{html.escape('' if v is None else str(v))}</td>"

    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{th}</tr>{trs}</table>"


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "synthd"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg") :]  # the XML prolog and doctype do not belong in HTML


def _empty(what: str) -> str:
    return f"<p class='muted'>no {html.escape(what)}</p>"


def _timeline(tl: dict[str, Any]) -> str:
    series = {k: tl[k] for k in ("records", "rejects", "dead") if tl[k]}
    if not series:
        return _empty("dated lines")
    fig = Figure(figsize=(10, 3.2))
    ax = fig.add_subplot()
    t0 = min(points[0][0] for points in series.values())
    for name, points in series.items():
        xs = [(t - t0) / 60 for t, _ in points]
        ax.plot(xs, [n for _, n in points], marker=".", label=name)
    start = dt.datetime.fromtimestamp(t0, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    ax.set_xlabel(f"minutes from {start}")
    ax.set_ylabel(f"lines per {tl['bucket_s']} s")
    ax.legend()
    note = f"<p class='muted'>{tl['undated']} lines without a time</p>" if tl["undated"] else ""
    return _svg(fig) + note


def _bars(counts: dict[str, int], title: str) -> str:
    if not counts:
        return f"<div>{_empty(title)}</div>"
    labels = list(counts)[:15][::-1]
    fig = Figure(figsize=(5, 0.3 * len(labels) + 1))
    ax = fig.add_subplot()
    ax.barh([label[:40] or "(empty)" for label in labels], [counts[k] for k in labels])
    ax.set_title(title)
    return f"<div>{_svg(fig)}</div>"


def _hist(columns: dict[str, dict[str, Any]]) -> str:
    shown = {k: v for k, v in columns.items() if v.get("count")}
    if not shown:
        return _empty(", ".join(columns))
    fig = Figure(figsize=(3.4 * len(shown), 2.8))
    for i, (name, s) in enumerate(shown.items()):
        ax = fig.add_subplot(1, len(shown), i + 1)
        edges = s["histogram"]["edges"]
        ax.stairs(s["histogram"]["counts"], edges, fill=True)
        ax.set_title(name)
    return _svg(fig)


def _diversity(d: dict[str, Any]) -> str:
    rows = [[n, d[f"distinct_{n}"], d[f"distinct_{n}_per_record"]] for n in (1, 2, 3)]
    return f"<p>On a uniform sample of {d['sample']} of {d['of']} completions.</p>" + _table(
        ["n", "distinct n-grams / all n-grams", "distinct n-grams per record"], rows
    )


def _samples(samples: dict[str, list[dict[str, Any]]]) -> str:
    def box(s: dict[str, Any], rejected: bool) -> str:
        head = f"<b>{html.escape(str(s.get('id')))}</b>"
        if rejected:
            head += f" · {html.escape(str(s.get('reason')))}: {html.escape(str(s.get('detail')))}"
        ctx = s.get("context")
        body = f"<div class='muted'>{html.escape(ctx)}</div>" if ctx else ""
        body += html.escape(str(s.get("completion") or ""))
        return f"<div class='rec{' rej' if rejected else ''}'>{head}\n{body}</div>"

    kept = "".join(box(s, False) for s in samples["kept"]) or _empty("records")
    rej = "".join(box(s, True) for s in samples["rejected"]) or _empty("rejects")
    return (
        f"<div class='pair'><div><h3>kept</h3>{kept}</div><div><h3>rejected</h3>{rej}</div></div>"
    )
