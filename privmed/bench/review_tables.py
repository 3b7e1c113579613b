"""The review's Tables 1–3, regenerated: each surveyed system's row with privmed's measurement in every attribute.

Rows and the 14 attributes are the review's (seed/, section 2 and Tables
1–5): Key, Author, Title, Year and Journal are the paper's; Dataset, Model,
Performance, Communication, Scalability, Reliability, Runtime, Privacy and
Security are measured by the bench on its own data, model and machine, as
mean ± 95 % CI over seeds. A "published" column quotes the paper's own figure
(shared/PAPERS.md) so the claim and the measurement sit side by side.

A system is found among the results by protocol name (and privacy mechanism
where the system is a mechanism on a protocol): when a protocol that another
issue adds lands in the registry under the name listed here (``more``,
``split``, ``he-clstm``, ``dp-cgan``, ``privacy-net``), its row fills in on
the next bench; until then the row says "not implemented yet".
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any

from privmed.bench import crossover
from privmed.bench.report import COLUMNS, dataset_line

NOT_YET = "not implemented yet"
NOT_IN_BENCH = "not in these results"


@dataclass(frozen=True)
class System:
    """One row of the review's tables: the paper, and how privmed's results for it are recognised."""

    table: int
    section: str
    key: str
    author: str
    title: str
    year: int
    journal: str
    protocols: tuple[str, ...]  # privmed protocol names implementing it (empty: a platform, not a bench row)
    published: str  # the paper's own figure (PAPERS.md), or what it reported
    mechanisms: tuple[str, ...] = ("none",)  # privacy mechanisms that make the system (None-like: any)
    note: str = ""  # what stands in for measurement where there is no bench row

    def matches(self, r: dict[str, Any]) -> bool:
        mechanism = r["privacy"].get("mechanism", "none")
        return r["protocol"] in self.protocols and ("*" in self.mechanisms or mechanism in self.mechanisms)


A, S, C, G, X = (
    "Asynchronous distributed learning",
    "Synchronous distributed learning",
    "Centralised learning",
    "Synthetic data generation",
    "Specialised solutions",
)
SYSTEMS = (
    System(
        1,
        A,
        "shokri2015privacy",
        "Shokri, Shmatikov",
        "Privacy-preserving deep learning",
        2015,
        "ACM CCS",
        ("dssgd",),
        "θu = 10 %: accuracy close to centralised (MNIST, SVHN); θu = 1 % costs 1–2 points",
        ("*",),
    ),
    System(
        1,
        A,
        "amir2017scalable",
        "Amir-Khalili et al.",
        "Scalable and fault tolerant platform for distributed learning on private medical data",
        2017,
        "MLMI workshop",
        ("admission",),
        "scales to 100 nodes; liveness stress-tested (figures not found)",
    ),
    System(
        1,
        A,
        "aono2017privacy",
        "Aono et al.",
        "Privacy-preserving deep learning via additively homomorphic encryption",
        2017,
        "IEEE TIFS",
        ("he-fedavg",),
        "accuracy identical to plaintext; communication about doubled",
        ("*",),
    ),
    System(
        1,
        A,
        "vizitiu2019towards",
        "Vizitiu et al.",
        "Towards privacy-preserving deep learning based medical imaging applications",
        2019,
        "IEEE MeMeA",
        ("more",),
        "accuracy indistinguishable from plaintext; 30× longer training (per the review)",
        ("*",),
    ),
    System(
        1,
        A,
        "jeon2019privacy",
        "Jeon et al.",
        "Privacy-preserving deep learning computation for geo-distributed medical big-data platforms",
        2019,
        "DSN-S",
        ("split",),
        "higher accuracy and lower communication than LSGD (figures not found)",
        ("*",),
    ),
    System(
        1,
        A,
        "phuong2019privacy",
        "Phuong et al.",
        "Privacy-preserving deep learning via weight transmission",
        2019,
        "IEEE TIFS",
        ("snt", "fnt"),
        "same accuracy as SGD, better than Aono; SNT recommended for L ≥ 20",
        ("*",),
    ),
    System(
        2,
        S,
        "chang2018distributed",
        "Chang et al.",
        "Distributed deep learning networks among institutions for medical imaging",
        2018,
        "JAMIA",
        ("cwt", "swt", "ensemble"),
        "CWT 77.3 % vs 78.7 % centralised; CWT scales to 20 institutions",
    ),
    System(
        2,
        S,
        "sheller2018multi",
        "Sheller et al.",
        "Multi-institutional deep learning modeling without sharing patient data",
        2018,
        "MICCAI BrainLes",
        ("fedavg", "cwt", "swt"),
        "Dice: pooled 0.862, FL 0.852, CWT "
        "0.82, SWT 0.803; 4 → 32 institutions: FL 0.862 → 0.857, CWT 0.843 → 0.809, SWT 0.841 → 0.701",
    ),
    System(
        2,
        S,
        "beaulieu2018privacy",
        "Beaulieu-Jones et al.",
        "Privacy-preserving distributed deep learning for clinical data",
        2018,
        "arXiv 1812.01484",
        ("cwt",),
        "AUROC of CWT + DP slightly below CWT, rises with sites (figures not found)",
        ("dp-sgd",),
    ),
    System(
        2,
        C,
        "wu2019p3sgd",
        "Wu et al.",
        "P3SGD: patient privacy preserving SGD",
        2019,
        "CVPR",
        ("centralised",),
        "slight accuracy decrease; resists model inversion (figures not found)",
        ("p3sgd",),
    ),
    System(
        2,
        G,
        "torkzadehmahani2019dp",
        "Torkzadehmahani et al.",
        "DP-CGAN: differentially private synthetic data and label generation",
        2019,
        "CVPR workshops",
        ("dp-cgan",),
        "ε = 9.6: LR 92.2 % real / 87.6 % DP-CGAN; MLP 97.6 / 88.2",
        ("*",),
    ),
    System(
        3,
        X,
        "blanquer2019medical",
        "Blanquer et al.",
        "Medical imaging processing architecture on ATMOSPHERE federated platform",
        2019,
        "CLOSER",
        (),
        "no model figures",
        note="a platform: privmed's deployment (privmed coordinator/site/run, TLS, SuperNode auth) plays its role; "
        "it is not a bench row",
    ),
    System(
        3,
        X,
        "kim2019privacy",
        "Kim et al.",
        "Privacy-Net: an adversarial approach for identity-obfuscated segmentation of medical images",
        2019,
        "arXiv 1909.04087",
        ("privacy-net",),
        "good segmentation without compromising identity (figures not found)",
        ("*",),
    ),
    System(
        3,
        X,
        "yue2019privacy",
        "Yue et al.",
        "Privacy-preserving time series medical images analysis using a hybrid deep learning framework",
        2019,
        "ACM TOIT",
        ("he-clstm",),
        "AUC > 0.94 (colposcopy, biopsy sequences)",
        ("*",),
    ),
    System(
        3,
        X,
        "gibson2018niftynet",
        "Gibson et al.",
        "NiftyNet: a deep-learning platform for medical imaging",
        2018,
        "CMPB",
        (),
        "NA",
        note="a platform: MONAI (its PyTorch successor) provides privmed's networks, "
        "losses and metrics; not a training technique",
    ),
)

ATTRIBUTES = ("Key", "Author", "Title", "Year", "Journal", *COLUMNS[1:])  # the review's 14 data attributes


# column widths (%) of the 14 attributes and the published figure: the paper's metadata narrow, measurements wide
WIDTHS = (7, 5, 8, 3.5, 5, 7, 5.5, 8, 8, 7, 6, 7, 8, 6, 9)


def _f(fig: dict[str, Any] | None, unit: str = "") -> str | None:
    if fig is None:
        return None
    digits = 3 if abs(fig["mean"]) < 10 else 1
    half = "" if math.isnan(fig["ci95"]) else f" ± {fig['ci95']:.{digits}f}"
    return f"{fig['mean']:.{digits}f}{half}{unit}"


def _each(labels: list[str], figures: dict[str, dict[str, Any]], make) -> str:
    """One 'label: value' per matched row (only the value when a single row matched)."""
    parts = []
    for label in labels:
        v = make(figures.get(label, {}))
        if v:
            parts.append(v if len(labels) == 1 else f"{label}: {v}")
    return "; ".join(parts) or "–"


def cells(system: System, results: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, str]:
    """The system's row: attribute -> text, measured from ``results`` / ``summary`` where privmed runs it."""
    meta = {
        "Key": system.key,
        "Author": system.author,
        "Title": system.title,
        "Year": str(system.year),
        "Journal": system.journal,
    }
    if not system.protocols:
        return {**meta, **{a: ("NA" if a != "Dataset" else system.note) for a in ATTRIBUTES[5:]}}
    plain = [r for r in results if not crossover.is_crossover(r) and not r["config"].get("faults")]
    mine = [r for r in plain if system.matches(r)]
    if not mine:
        from privmed.protocols.registry import PROTOCOLS

        missing = not any(p in PROTOCOLS for p in system.protocols)
        return {**meta, **{a: NOT_YET if missing else NOT_IN_BENCH for a in ATTRIBUTES[5:]}}
    labels = list(dict.fromkeys(r["label"] for r in mine))
    figures = {r["label"]: r["figures"] for r in summary["rows"]}
    first = mine[0]
    faults = [r for r in results if r["config"].get("faults") and system.matches(r)]
    fault_labels = list(dict.fromkeys(r["label"] for r in faults))
    xo = [c for c in crossover.table(crossover.sweep(results)) if c["protocol"] in system.protocols]
    out = {
        **meta,
        "Dataset": dataset_line(first),
        "Model": f"{first['model']['name']} ({first['model']['parameters']:,} params)",
        "Performance": _each(labels, figures, _performance),
        "Communication": _each(labels, figures, lambda f: _f(f.get("kB/site/round"), " kB/site/round")),
        "Scalability": _scalability(first, xo),
        "Reliability": _each(fault_labels, figures, lambda f: "AUROC under faults " + (_f(f.get("test AUROC")) or "–"))
        if fault_labels
        else "no fault run",
        "Runtime": _each(labels, figures, lambda f: _f(f.get("wall"), " s wall")),
        "Privacy": _each(labels, figures, _privacy),
        "Security": _each(labels, figures, _security),
    }
    return out


def _performance(f: dict[str, Any]) -> str:
    parts = [f"{name} {_f(f[key])}" for key, name in (("test AUROC", "AUROC"), ("Dice", "Dice")) if f.get(key)]
    return ", ".join(parts)


def _scalability(r: dict[str, Any], xo: list[dict[str, Any]]) -> str:
    """The schedule; with a crossover sweep, each protocol's time to the common level at its fewest and most sites
    on the first (fastest) link."""
    s = (r.get("scalability") or {}).get("schedule", "–")
    lan = crossover.LINKS[0].name
    times = []
    for protocol in dict.fromkeys(c["protocol"] for c in xo):
        got = sorted(
            (c["sites"], c["seconds"])
            for c in xo
            if c["protocol"] == protocol and c["link"] == lan and c["seconds"] is not None
        )
        if got:
            (n0, t0), (n1, t1) = got[0], got[-1]
            times.append(f"{protocol} {t0:.1f} s at {n0} → {t1:.1f} s at {n1} sites")
    if times:
        s += f"; to the crossover's common level on a {lan.split(' (')[0]}: " + ", ".join(times)
    return s


def _privacy(f: dict[str, Any]) -> str:
    parts = []
    if f.get("ε"):
        parts.append("ε " + _f(f["ε"]))
    if f.get("MIA AUC"):
        parts.append(f"MIA AUC {_f(f['MIA AUC'])}")
    if f.get("inversion PSNR"):
        null = f.get("flat-guess PSNR")
        parts.append(
            f"inversion {_f(f['inversion PSNR'], ' dB')}" + (f" (flat guess {_f(null, ' dB')})" if null else "")
        )
    return ", ".join(parts)


def _security(f: dict[str, Any]) -> str:
    parts = []
    if f.get("PGD accuracy ε=8/255"):
        parts.append(f"PGD acc {_f(f['PGD accuracy ε=8/255'])}")
    if f.get("backdoor success"):
        parts.append(f"backdoor {_f(f['backdoor success'])}")
    return ", ".join(parts)


def tables(results: list[dict[str, Any]], summary: dict[str, Any]) -> dict[int, list[tuple[System, dict[str, str]]]]:
    out: dict[int, list[tuple[System, dict[str, str]]]] = {}
    for system in SYSTEMS:
        out.setdefault(system.table, []).append((system, cells(system, results, summary)))
    return out


def html_tables(results: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """Tables 1–3 as HTML: the review's 14 attributes, measured, and the paper's published figure."""
    out = [
        '<p class="note">The review\'s rows and its 14 attributes; measured cells are mean ± 95 % CI over seeds on '
        "privmed's data and model (the Dataset cell); MIA AUC's chance level is 0.5, the inversion's null is its "
        "flat guess; <em>published</em> quotes the paper. A row whose protocol is "
        f"not in privmed says “{NOT_YET}”.</p>"
    ]
    for number, rows in tables(results, summary).items():
        head = "".join(f"<th>{a}</th>" for a in ATTRIBUTES) + "<th>published (the paper)</th>"
        cols = "".join(f'<col style="width:{w}%">' for w in WIDTHS)
        out.append(
            f'<h3>Table {number}</h3><div class="wide"><table class="review"><colgroup>{cols}</colgroup>'
            f"<thead><tr>{head}</tr></thead>"
        )
        out.append("<tbody>")
        section = None
        for system, c in rows:
            if system.section != section:
                section = system.section
                out.append(f'<tr><th colspan="{len(ATTRIBUTES) + 1}">{html.escape(section)}</th></tr>')
            tds = "".join(
                ('<td class="nyi">' if c[a] in (NOT_YET, NOT_IN_BENCH) else "<td>") + f"{html.escape(c[a])}</td>"
                for a in ATTRIBUTES
            )
            out.append(f"<tr>{tds}<td>{html.escape(system.published)}</td></tr>")
        out.append("</tbody></table></div>")
    return "\n".join(out)
