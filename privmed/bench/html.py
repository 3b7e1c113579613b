"""``report.html``: the bench as one self-contained page, built from result dicts only.

One file, no network: CSS inline, every plot a base64 PNG data URI, no
script. A compact summary table (one number ± 95 % CI per cell, the unit in
the header, colour for better or worse than the centralised reference, marks
where a paired test over seeds found a difference), the review's Tables 1–3
with privmed's measurement beside each paper's published figure, the CWT ↔ FL
crossover, the plots, the threat matrix and the details behind every row.
The Markdown tables (details, threat matrix, crossover) are rendered with
markdown-it-py, which rich already brings; the page's own tables are written
here so every summary cell carries its exact value (``data-mean``) for tests
and readers who copy numbers.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

from privmed.bench import crossover, review_tables
from privmed.bench.privacy import curves, privacy_section, write_epsilon_plot
from privmed.bench.report import (
    COLUMNS,
    distribution_table,
    row,
    threat_section,
    write_plot,
    write_privacy_plot,
)
from privmed.bench.stats import FIGURES, REFERENCES, compare, summarise

# +1: higher is better, -1: lower is better (figures without a direction are not coloured)
DIRECTION = {
    "test AUROC": 1,
    "balanced accuracy": 1,
    "Dice": 1,
    "Dice (all cases)": 1,
    "HD95": -1,
    "kB/site/round": -1,
    "wall": -1,
    "MIA AUC": -1,
    "inversion PSNR": -1,
    "PGD accuracy ε=8/255": 1,
    "backdoor success": -1,
}
REFERENCE = "centralised"  # the row every cell is coloured against
MARKS = {"centralised": "*", "fedavg": "†"}  # significant paired difference to that reference row

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'DejaVu Sans',sans-serif;margin:24px auto;max-width:1400px;color:#222;
padding:0 16px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0;font-size:12.5px}
th,td{border:1px solid #ccc;padding:3px 6px;vertical-align:top}
th{background:#f3f3f3;text-align:left}
td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
td.better{background:#dff0d8}td.worse{background:#f8dcdc}td.ref{background:#e8eef8}
td.nyi{color:#999;font-style:italic}
table.review{table-layout:fixed;width:100%;font-size:11.5px}table.review td{overflow-wrap:anywhere}
table.review td:nth-child(-n+5){color:#555;font-size:11px}
.note{color:#555;font-size:12.5px;max-width:1100px}
img{max-width:100%;border:1px solid #eee;margin:6px 0}
details{margin:4px 0}summary{cursor:pointer;font-weight:600}
.wide{overflow-x:auto}
code{font-size:12px;background:#f5f5f5;padding:0 2px}
"""

_MD = MarkdownIt("commonmark", {"html": False}).enable("table")


def png_data_uri(draw: Callable[[Any], Any]) -> str | None:
    """Run ``draw(file)`` (a matplotlib writer) into memory; its PNG as a data URI, or None if it drew nothing."""
    buf = io.BytesIO()
    if draw(buf) is False or not buf.getvalue():
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(uri: str | None, alt: str) -> str:
    return "" if uri is None else f'<img src="{uri}" alt="{html.escape(alt)}">'


def _md(lines: list[str]) -> str:
    return _MD.render("\n".join(lines))


def _fmt(mean: float, half: float) -> str:
    digits = 3 if abs(mean) < 10 else 1
    return f"{mean:.{digits}f}" + ("" if math.isnan(half) else f" ± {half:.{digits}f}")


def summary_table(summary: dict[str, Any]) -> str:
    """The compact table: rows × figures, each cell mean ± 95 % CI, coloured against the centralised row."""
    rows = summary["rows"]
    order = [name for name, _, _ in FIGURES]
    names = sorted(
        dict.fromkeys(k for r in rows for k in r["figures"]),
        key=lambda n: (n not in order, order.index(n) if n in order else 0),
    )
    units = {n: r["figures"][n]["unit"] for r in rows for n in r["figures"]}
    ref = next((r["figures"] for r in rows if r["label"] == REFERENCE), None)
    marks: dict[str, str] = {}
    for c in summary.get("comparisons", []):
        if c["significant"] and c["reference"] in MARKS:
            marks[c["row"]] = marks.get(c["row"], "") + MARKS[c["reference"]]
    head = "".join(
        f"<th>{html.escape(n)}" + (f"<br><small>{html.escape(units[n])}</small>" if units[n] else "") + "</th>"
        for n in names
    )
    out = [f'<div class="wide"><table class="summary"><thead><tr><th>row</th><th>seeds</th>{head}</tr></thead><tbody>']
    for r in rows:
        cells = [
            f"<td>{html.escape(r['label'])}{marks.get(r['label'], '')}</td>",
            f'<td class="num">{len(r["seeds"])}</td>',
        ]
        for n in names:
            f = r["figures"].get(n)
            if f is None:
                cells.append('<td class="num">–</td>')
                continue
            cls = "num"
            if r["label"] == REFERENCE:
                cls += " ref"
            elif ref is not None and n in ref and n in DIRECTION and f["mean"] != ref[n]["mean"]:
                cls += " better" if (f["mean"] - ref[n]["mean"]) * DIRECTION[n] > 0 else " worse"
            cells.append(
                f'<td class="{cls}" data-row="{html.escape(r["label"])}" data-figure="{html.escape(n)}" '
                f'data-mean="{f["mean"]!r}">{_fmt(f["mean"], f["ci95"])}</td>'
            )
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    out.append(
        '<p class="note">Mean ± 95 % CI (Student t) over seeds. Colour: better (green) or worse (red) than the '
        f"centralised row's mean (blue); wall, bytes, MIA AUC, PSNR and backdoor success are better when lower. "
        f"{MARKS['centralised']} / {MARKS['fedavg']}: test AUROC differs significantly from centralised / FedAvg "
        "(paired t-test over seeds, p &lt; 0.05); a difference without a mark is not shown with these seeds.</p>"
    )
    return "\n".join(out)


def comparisons_table(summary: dict[str, Any]) -> str:
    lines = ["| row | reference | figure | difference ± 95 % CI | p | significant |", "|---|---|---|---|---|---|"]
    for c in summary.get("comparisons", []):
        half = "" if c["ci95"] != c["ci95"] else f" ± {c['ci95']:.3f}"
        lines.append(
            f"| {c['row']} | {c['reference']} | {c['figure']} | {c['difference']:+.3f}{half} | {c['p']:.3f} | "
            f"{'**yes**' if c['significant'] else 'not shown'} |"
        )
    return _md(lines) if len(lines) > 2 else ""


def details(results: list[dict[str, Any]]) -> str:
    """Per row (first seed): the review's columns as the Markdown report writes them, and the data distribution."""
    out = []
    for r in results:
        cells = row(r)
        body = _md(["| column | value |", "|---|---|", *(f"| {c} | {v} |" for c, v in zip(COLUMNS[1:], cells[1:]))])
        body += _md(distribution_table(r))
        out.append(
            f"<details><summary>{html.escape(cells[0].split(' (`')[0])} — {html.escape(r['technique'])}"
            f"</summary>{body}</details>"
        )
    return "\n".join(out)


def _per_site_plot(results: list[dict[str, Any]], path: Any) -> bool:
    """Test metric per site (columns) and row (lines) as a heat map."""
    rows = [r for r in results if r["performance"].get("per_site")]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metric = "auroc" if "auroc" in next(iter(rows[0]["performance"]["per_site"].values())) else "dice"
    sites = list(dict.fromkeys(s for r in rows for s in r["performance"]["per_site"]))[:16]
    grid = np.array(
        [[(r["performance"]["per_site"].get(s) or {}).get(metric) or np.nan for s in sites] for r in rows], float
    )
    fig, ax = plt.subplots(figsize=(3.8 + 0.7 * len(sites), 0.9 + 0.28 * len(rows)))  # room for the row labels
    im = ax.imshow(grid, cmap="viridis", vmin=0.4 if metric == "auroc" else 0, vmax=1, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(sites)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
    ax.set_xticks(range(len(sites)), sites, fontsize=7, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), [r.get("label", r["protocol"]) for r in rows], fontsize=7)
    fig.colorbar(im, ax=ax, label=f"test {metric} per site")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _bytes_plot(results: list[dict[str, Any]], path: Any) -> bool:
    """Coordinator bytes per round against the number of sites, per protocol and mechanism."""
    pts: dict[str, list[tuple[int, float]]] = {}
    for r in results:
        b = (r.get("scalability") or {}).get("coordinator_bytes_per_round")
        if b:
            key = r["protocol"] + (
                "" if r["privacy"].get("mechanism", "none") == "none" else f" + {r['privacy']['mechanism']}"
            )
            pts.setdefault(key, []).append((len(r["dataset"]["distribution"]), b))
    if not pts:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len({n for xy in pts.values() for n, _ in xy}) == 1:  # one federation size: a bar per protocol
        n = next(iter(pts.values()))[0][0]
        keys = sorted(pts, key=lambda k: sum(b for _, b in pts[k]) / len(pts[k]))
        fig, ax = plt.subplots(figsize=(7, 0.8 + 0.3 * len(keys)))
        ax.barh(keys, [sum(b for _, b in pts[k]) / len(pts[k]) / 1e6 for k in keys], color="tab:blue")
        ax.set_xscale("log")
        ax.set_xlabel(f"coordinator traffic per round at {n} sites (MB, up + down)")
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(alpha=0.3, axis="x")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return True
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, xy in sorted(pts.items()):
        by: dict[int, list[float]] = {}
        for n, b in xy:
            by.setdefault(n, []).append(b)
        xs = sorted(by)
        ax.plot(xs, [sum(by[x]) / len(by[x]) / 1e6 for x in xs], marker="o", ms=4, label=key)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sites")
    ax.set_ylabel("coordinator traffic per round (MB, up + down)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plots(results: list[dict[str, Any]]) -> list[tuple[str, str | None, str]]:
    """(title, data URI, note) of every plot, from the first seed's rows (the crossover rows only in their own)."""
    first = min((int(r["seed"]) for r in results), default=0)
    rows = [r for r in results if int(r["seed"]) == first and not crossover.is_crossover(r)]
    out = [
        (
            "Learning curves",
            png_data_uri(lambda f: write_plot(rows, f)) if rows else None,
            f"validation metric per round, seed {first}",
        ),
        (
            "Leakage against accuracy",
            png_data_uri(lambda f: write_privacy_plot(rows, f)) if rows else None,
            "dashed: chance (MIA AUC 0.5) and the inversion's flat-guess null; dotted: the positive control",
        ),
        (
            "Privacy–utility",
            png_data_uri(lambda f: write_epsilon_plot(results, f)),
            "test metric against ε per protocol and DP unit; ∞ = the same run without DP",
        ),
        (
            "Bytes per round against sites",
            png_data_uri(lambda f: _bytes_plot(results, f)),
            "measured by the in-process engine",
        ),
        ("Per-site performance", png_data_uri(lambda f: _per_site_plot(rows, f)), f"seed {first}"),
        ("CWT ↔ FL crossover", png_data_uri(lambda f: crossover.write_crossover_plot(results, f)), ""),
    ]
    return out


def build_html(
    results: list[dict[str, Any]], summary: dict[str, Any] | None = None, *, title: str = "privmed bench"
) -> str:
    """The page, from ``results`` (and their ``summary``; computed from the results when not given)."""
    if summary is None:
        summary = summary_of(results)
    summary = crossover.without_crossover(summary, results)
    first = min((int(r["seed"]) for r in results), default=0)
    main_rows = [r for r in results if int(r["seed"]) == first and not crossover.is_crossover(r)]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">{len(results)} runs, {len(summary["rows"])} rows, {summary["seeds"]} seed(s) each; '
        "every number here is read from the result files (results.json), nothing is re-run. Performance is on the "
        "pooled held-out test split of all sites, of the model selected on validation.</p>",
        f"<h2>Summary: mean ± 95 % CI over {summary['seeds']} seed(s)</h2>",
        summary_table(summary),
        "<details><summary>Paired differences to the reference rows (test AUROC)</summary>",
        comparisons_table(summary) or '<p class="note">none: fewer than two paired seeds</p>',
        "</details>",
        "<h2>The review's Tables 1–3, measured</h2>",
        review_tables.html_tables(results, summary),
    ]
    xo = crossover.crossover_section(results)
    if xo:
        parts.append(_md(xo))
    parts.append("<h2>Plots</h2>")
    for name, uri, note in plots(results):
        if uri:
            parts += [f"<h3>{html.escape(name)}</h3>", _img(uri, name)]
            if note:
                parts.append(f'<p class="note">{html.escape(note)}</p>')
    if curves(results):  # a sweep with at least one DP row: its table
        parts.append(_md([x for x in privacy_section(results, "") if not x.startswith("![")]))
    threat = threat_section(main_rows)
    if threat:
        parts.append(_md(threat))
    parts += [f"<h2>Details per row (seed {first})</h2>", details(main_rows), "</body></html>"]
    return "\n".join(p for p in parts if p)


def summary_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    seeds = max((len(r["seeds"]) for r in summarise(results)), default=0)
    return {"seeds": seeds, "rows": summarise(results), "comparisons": compare(results, REFERENCES)}


def write_html(results: list[dict[str, Any]], path: Path, summary: dict[str, Any] | None = None, **kw: Any) -> Path:
    Path(path).write_text(build_html(results, summary, **kw), encoding="utf-8")
    return Path(path)


def load_results(paths: list[Path]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Result dicts from bench ``results.json`` files, single-run ``result.json`` files or folders holding either.

    Returns the results (each labelled: a bench row keeps its label, a single run is named after its run) and the
    bench's own summary.json when exactly one bench was given and it has one (else None: computed from the results).
    """
    import json

    from privmed.errors import PrivmedError

    results: list[dict[str, Any]] = []
    benches: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files = [path / "results.json"] if (path / "results.json").exists() else sorted(path.rglob("result.json"))
        else:
            files = [path]
        if not files:
            raise PrivmedError(f"{path}: no results.json or */result.json in this folder")
        for f in files:
            try:
                data = json.loads(f.read_text())
            except (OSError, ValueError) as exc:
                raise PrivmedError(f"{f}: not a readable JSON result file ({exc})") from None
            runs = data if isinstance(data, list) else [data]
            if not all(isinstance(r, dict) and "performance" in r and "config" in r for r in runs):
                raise PrivmedError(f"{f}: not a privmed result (expected result.json or a bench's results.json)")
            if isinstance(data, list):
                benches.append(f)
            for r in runs:
                r.setdefault("label", r["config"].get("name") or r["protocol"])
            results += runs
    if not results:
        raise PrivmedError("no results given: pass result.json or results.json files, or folders holding them")
    summary = None
    if len(benches) == 1 and len(results) == len(json.loads(benches[0].read_text())):
        summary_file = benches[0].with_name("summary.json")
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else None
    return results, summary


def report_from_files(paths: list[Path], out: Path, *, title: str = "privmed report") -> Path:
    """``privmed report RUNS...``: the HTML report of any set of result files."""
    results, summary = load_results(paths)
    return write_html(results, out, summary, title=title)
