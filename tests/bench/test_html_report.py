"""report.html is one self-contained, well-formed page whose numbers are those of results.json; `privmed report`."""

import base64
import json
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

from privmed.bench.suite import run_suite
from privmed.cli import app
from privmed.config import DataConfig, RunConfig
from privmed.protocols.base import TrainSettings

TINY = RunConfig(data=DataConfig(image_size=16), train=TrainSettings(rounds=1))
ROWS = [
    ("centralised", RunConfig(**{**TINY.__dict__, "protocol": "centralised", "name": "c"})),
    ("fedavg", RunConfig(**{**TINY.__dict__, "protocol": "fedavg", "name": "f"})),
]
VOID = {"meta", "img", "br", "hr", "input", "link", "col", "wbr"}


class Page(HTMLParser):
    """Collects images, links, tables (rows of cell spans) and checks that every element is closed in order."""

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.images, self.urls, self.tables, self.cells = [], [], [], [], [], []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "img":
            self.images.append(a.get("src", ""))
        for k in ("src", "href"):
            if k in a:
                self.urls.append(a[k])
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append(0)
        elif tag in ("td", "th"):
            self.tables[-1][-1] += int(a.get("colspan", 1))
            if "data-mean" in a:
                self.cells.append(a)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]!r}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        if self.cells and self.stack and self.stack[-1] == "td" and "text" not in self.cells[-1]:
            self.cells[-1]["text"] = data


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = run_suite(runs_dir=tmp_path_factory.mktemp("b"), rows=ROWS, seeds=2, attacks=("membership",))
    page = Page()
    text = (out / "report.html").read_text()
    page.feed(text)
    page.close()
    return out, text, page, json.loads((out / "results.json").read_text())


def test_the_page_is_self_contained_and_well_formed(bench):
    _, text, page, _ = bench
    assert not page.errors and page.stack == [], page.errors[:3]
    assert page.scripts == 0
    assert len(page.images) >= 4  # learning curves, leakage, bytes per round, per-site at least
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [u for u in page.urls if not u.startswith("data:")]
    assert "http://" not in text and "https://" not in text and "url(" not in text
    # every table is rectangular: each row spans as many columns as the first
    assert page.tables
    for rows in page.tables:
        assert rows and all(n == rows[0] for n in rows), rows


# summary figure -> its value in one result, read straight from results.json (not through privmed.bench.stats)
RAW = {
    "test AUROC": lambda r: r["performance"]["final"]["auroc"],
    "balanced accuracy": lambda r: r["performance"]["final"]["balanced_accuracy"],
    "wall": lambda r: r["runtime"]["wall_seconds"],
    "kB/site/round": lambda r: r["communication"]["bytes_per_site_per_round"] / 1000,
    "MIA AUC": lambda r: r["privacy"]["leakage"]["MIA AUC"],
}


def test_the_summary_numbers_are_those_of_results_json(bench):
    _, _, page, results = bench
    checked = set()
    for cell in page.cells:
        label, figure = cell["data-row"], cell["data-figure"]
        if figure not in RAW:
            continue
        values = [RAW[figure](r) for r in results if r["label"] == label]
        mean = sum(values) / len(values)
        assert float(cell["data-mean"]) == pytest.approx(mean, rel=1e-12)
        digits = 3 if abs(mean) < 10 else 1
        assert cell["text"].startswith(f"{mean:.{digits}f} ± ")  # the shown number, with its CI
        checked.add((label, figure))
    assert {(label, "test AUROC") for label, _ in ROWS} <= checked
    assert ("fedavg", "kB/site/round") in checked and ("fedavg", "MIA AUC") in checked


def test_the_review_tables_carry_the_measurement_beside_the_published_figure(bench):
    _, text, _, results = bench
    auroc = [r["performance"]["final"]["auroc"] for r in results if r["label"] == "fedavg"]
    assert "<h3>Table 1</h3>" in text and "<h3>Table 3</h3>" in text
    sheller = text[text.index("sheller2018multi") :].split("</tr>")[0]
    assert f"<td>AUROC {sum(auroc) / 2:.3f} ± " in sheller and "FL 0.852" in sheller  # measured, then published
    # implemented but not run in this bench: said so; a system privmed lacks says "not implemented yet"
    assert "not in these results" in text.split("vizitiu2019towards")[1].split("</tr>")[0]
    import dataclasses

    from privmed.bench import review_tables as rt

    absent = dataclasses.replace(rt.SYSTEMS[0], protocols=("no-such-protocol",))
    summary = json.loads((bench[0] / "summary.json").read_text())
    assert set(list(rt.cells(absent, results, summary).values())[5:]) == {"not implemented yet"}


def test_the_markdown_report_is_the_summary_and_links(bench):
    out = bench[0]
    md = (out / "report.md").read_text()
    assert "[report.html](report.html)" in md and "mean ± 95 % CI" in md and "| Technique |" not in md
    assert "| Technique |" in (out / "details.md").read_text()


def _cli(*args):
    return CliRunner().invoke(app, ["report", *map(str, args)])


def test_privmed_report_builds_the_page_from_any_result_files(bench, tmp_path):
    out = bench[0]
    run = _cli(out / "f-s0" / "result.json", out / "c-s1", "-o", tmp_path / "mine.html")
    assert run.exit_code == 0, run.output
    page = Page()
    page.feed((tmp_path / "mine.html").read_text())
    assert not page.errors and {c["data-row"] for c in page.cells} == {"f-s0", "c-s1"}
    (tmp_path / "bad.json").write_text('{"a": 1}')
    bad = _cli(tmp_path / "bad.json", "-o", tmp_path / "x.html")
    assert bad.exit_code != 0 and "bad.json: not a privmed result" in bad.output
    assert not (tmp_path / "x.html").exists()
