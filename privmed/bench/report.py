"""The bench report: the review's columns, measured; a validation-curve plot.

Computed from result dicts only (never by re-running). A column with nothing
measured says "not measured yet".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from privmed.bench.stats import without_faults
from privmed.protocols import fedavg

COLUMNS = (
    "Technique",
    "Dataset",
    "Model",
    "Performance",
    "Communication",
    "Scalability",
    "Reliability",
    "Runtime",
    "Privacy",
    "Security",
)
NOT_YET = "not measured yet"
WALL_REFERENCE = fedavg.SPEC.name  # the "x FedAvg wall" ratio's reference: plain FedAvg on the same data


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _performance(r: dict[str, Any]) -> str:
    f = r["performance"]["final"]
    keys = ["accuracy", "auroc", "balanced_accuracy"] if "accuracy" in f else ["dice"]
    out = ", ".join(f"{k.replace('balanced_accuracy', 'bal.acc')} {f[k]:.3f}" for k in keys if f.get(k) is not None)
    enc = r["performance"].get("encrypted_inference")
    if enc:  # HE-CLSTM: encrypted vs plaintext inference on some test sequences
        out += (
            f"; encrypted inference on {enc['sequences']} sequences: {enc['identical_decisions']:.0%} identical "
            f"decisions, max logit error {enc['max_abs_error']:.1e}"
        )
    return out


def _communication(r: dict[str, Any]) -> str:
    c = r["communication"]
    if "raw_data_bytes_up" in c:
        out = f"raw data {_bytes(c['raw_data_bytes_up'])} up"
        return f"{out} ({c['note']})" if c.get("note") else out
    per_site = _bytes(c.get("bytes_per_site_per_round", 0))
    out = f"{_bytes(c['bytes_up'])} up / {_bytes(c['bytes_down'])} down; {per_site}/site/round"
    if c.get("peer_bytes_per_site_per_round") is not None:  # FNT: weights go site to site, not through the Grid
        out += f"; plus {_bytes(c['peer_bytes_per_site_per_round'])}/site/round on peer links"
    if c.get("expansion_factor") is not None:  # encrypted updates: ciphertext / float32 plaintext
        out += f"; update expansion {c['expansion_factor']:.2f}x over float32"
    return f"{out} ({c['note']})" if c.get("note") else out


def _runtime(r: dict[str, Any], baseline_wall: float | None) -> str:
    t = r["runtime"]
    out = f"{t['wall_seconds']:.1f} s wall, {t['cpu_seconds']:.1f} s CPU"
    phases = [(p, t.get(f"{p}_seconds_per_round")) for p in ("encrypt", "aggregate", "decrypt")]
    if any(v is not None for _, v in phases):
        out += "; per round " + ", ".join(f"{p} {v:.3f} s" for p, v in phases if v is not None)
    if t.get("encrypted_inference_seconds_per_sequence") is not None:
        enc, plain = t["encrypted_inference_seconds_per_sequence"], t["plaintext_inference_seconds_per_sequence"]
        out += f"; encrypted inference {enc:.1f} s/sequence ({enc / plain:,.0f}x plaintext)"
    if t.get("time_ratio_vs_plaintext") is not None:  # training on encrypted data (MORE), timed in the same run
        out += f"; {t['time_ratio_vs_plaintext']:.1f}x the same network's epoch on plaintext"
    if (
        baseline_wall and r["privacy"].get("mechanism", "none") != "none"
    ):  # per round: rows with fewer rounds compare too
        out += f"; {t['wall_seconds'] / r['config']['train']['rounds'] / baseline_wall:.2f}x FedAvg wall per round"
    return out


def _scalability(r: dict[str, Any]) -> str:
    s = r.get("scalability") or {}
    if "schedule" not in s:
        return s.get("note", NOT_YET)
    if s["schedule"] == "one trainer":
        return f"one trainer, no coordination ({s['training_seconds']:.1f} s training)"
    head = (
        f"sequential: sites train in turn, training time grows with sites ({s['site_seconds_sum']:.1f} s for "
        f"{s['sites_training']})"
        if s["schedule"] == "sequential"
        else f"parallel: deployed, sites train at once "
        f"(slowest {s['site_seconds_max']:.1f} s of {s['site_seconds_sum']:.1f} s in turn)"
    )
    return f"{head}; coordinator traffic {_bytes(s['coordinator_bytes_per_round'])}/round, linear in sites"


def _reliability(r: dict[str, Any], fault_free: dict[str, Any] | None = None) -> str:
    rel = r["reliability"]
    n = len(rel.get("rejected_updates", []))
    faults = rel.get("faults_injected") or []
    if not faults and not n:
        return "no faults injected; 0 updates rejected"
    head = f"{len(faults)} faults injected"
    if rel.get("faults_by_kind"):
        head += " (" + ", ".join(f"{k} {v}" for k, v in rel["faults_by_kind"].items() if v) + ")"
        head += f", {rel.get('faults_survived', 0)} survived, {len(rel.get('rounds_lost', []))} rounds lost"
        head += f", {rel.get('corrupt_caught', 0)} corrupted updates caught"
    out = f"{head}; {n} updates rejected; {'completed' if rel.get('completed') else 'failed'}"
    if fault_free is not None:
        m = r["performance"]["metric"]
        got, ref = r["performance"]["final"].get(m), fault_free["performance"]["final"].get(m)
        if got is not None and ref is not None:
            out += f"; {m} {got - ref:+.3f} against the fault-free run (this seed; over seeds: the Summary)"
    return out


def _fault_free(r: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The row with the same config but no faults, for a row with injected faults."""
    if not r["config"].get("faults"):
        return None

    key = without_faults(r["config"])
    return next((o for o in results if not o["config"].get("faults") and without_faults(o["config"]) == key), None)


def _privacy(r: dict[str, Any]) -> str:
    p = r["privacy"]
    parts = [f"coordinator sees {p['coordinator_sees']}"]
    if p.get("encrypted_inference"):
        parts.append(p["encrypted_inference"])
    if p.get("epsilon") is not None:
        parts.append(f"ε={p['epsilon']:.2f}, δ={p['delta']:g} ({p['unit']}-level)")
    leak = p.get("leakage")
    if p.get("audit_error"):
        leak = f"audit failed ({p['audit_error']})"
    parts.append(
        f"leakage: {leak}"
        if isinstance(leak, str)
        else "leakage: " + ", ".join(f"{k} {v:.3f}" for k, v in leak.items())
    )
    return "; ".join(parts)


def _security(r: dict[str, Any]) -> str:
    s = r.get("security", {}).get("attacks", NOT_YET)
    return s if isinstance(s, str) else ", ".join(f"{k} {v:.3f}" for k, v in s.items())


def dataset_line(r: dict[str, Any]) -> str:
    d = r["dataset"]
    patients = sum(s["patients"] for s in d["distribution"])
    shape = "x".join(map(str, d["image_shape"]))
    return f"{d['name']} {shape}, {len(d['distribution'])} sites, {d['split']}, {patients:,} patients"


def _data_key(r: dict[str, Any]) -> str:
    return json.dumps(r["config"]["data"], sort_keys=True)


def row(r: dict[str, Any], baseline_wall: float | None = None, fault_free: dict[str, Any] | None = None) -> list[str]:
    m = r["model"]
    return [
        f"{r.get('label', r['protocol'])} (`{r['technique']}`)",
        dataset_line(r),
        f"{m['name']} ({m['parameters']:,} params)",
        _performance(r),
        _communication(r),
        _scalability(r),
        _reliability(r, fault_free),
        _runtime(r, baseline_wall),
        _privacy(r),
        _security(r),
    ]


def distribution_table(r: dict[str, Any]) -> list[str]:
    lines = ["| site | patients | train / val / test images | train labels | test labels |", "|---|---|---|---|---|"]
    for s in r["dataset"]["distribution"]:
        im = s["images"]
        lines.append(
            f"| {s['site']} | {s['patients']} | {im['train']} / {im['val']} / {im['test']} | {s['labels_train']} | "
            f"{s['labels_test']} |"
        )
    return lines


def write_report(
    results: list[dict[str, Any]], path: Path, *, plot_name: str | None = None, summary: dict[str, Any] | None = None
) -> None:
    lines = ["# privmed bench", ""]
    if summary:
        lines += summary_section(summary)
        first_seed = min(int(r["seed"]) for r in results)
        results = [r for r in results if int(r["seed"]) == first_seed]
        lines += ["", f"## Details of seed {first_seed} (every seed: results.json)", ""]
    lines += [
        "Every row: same model, same seed, same machine; the same data unless its Dataset cell says otherwise. "
        "Performance is on the pooled held-out test split of all sites, of the model selected on validation.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    # the "x FedAvg wall" ratio compares a row with plain FedAvg on the same data
    fedavg: dict[str, float] = {}
    datasets: dict[str, dict[str, Any]] = {}  # the first row on each data set
    for r in results:
        datasets.setdefault(_data_key(r), r)
        if r["protocol"] == WALL_REFERENCE and r["privacy"].get("mechanism") == "none":
            fedavg.setdefault(_data_key(r), r["runtime"]["wall_seconds"] / r["config"]["train"]["rounds"])
    lines += ["| " + " | ".join(row(r, fedavg.get(_data_key(r)), _fault_free(r, results))) + " |" for r in results]
    lines += ["", "## Data distribution (per site)"]
    for key, first in datasets.items():
        rows = [r.get("label", r["protocol"]) for r in results if _data_key(r) == key]
        lines += [
            "",
            f"{dataset_line(first)}: {len(rows)} row{'s' * (len(rows) != 1)}"
            + ("" if len(datasets) == 1 else f" ({', '.join(rows[:4])}{', …' if len(rows) > 4 else ''})"),
            "",
        ]
        lines += distribution_table(first)
    if plot_name:
        lines += ["", f"![validation metric per round]({plot_name})"]
    if any(isinstance(r["privacy"].get("leakage"), dict) for r in results):
        lines += [
            "",
            "Privacy: MIA AUC is the loss-threshold membership attack (Yeom 2018; 0.5 = chance) at image and patient "
            "level; "
            "inversion PSNR is Inverting Gradients (Geiping 2020) against each party that sees an update (one image "
            "from one site's one-step update, or one image per site in the aggregate), headline = the most exposed "
            "party (a flat mean-intensity guess scores ~15 dB; the threat matrix below says who sees what). "
            "Re-identification (rows that send encodings: Privacy-Net) is a fresh Siamese attacker's top-1 retrieval "
            "and verification AUC on unseen patients from the frozen encoder's outputs, beside the same attacker on "
            "the raw images (control) and chance (null), pairs within a site. "
            "Security: PGD-10 accuracy at ε = 8/255 and the success of a "
            "trigger backdoor from 1 malicious site through the row's own protocol. Details per row: <run>/audit.json.",
            "",
            "![leakage against accuracy](privacy_utility.png)",
        ]
    lines += threat_section(results)
    path.write_text("\n".join(lines) + "\n")


def _cell(f: dict[str, Any] | None) -> str:
    if f is None:
        return "–"
    digits = 3 if abs(f["mean"]) < 10 else 1
    half = "" if f["ci95"] != f["ci95"] else f" ± {f['ci95']:.{digits}f}"  # NaN: one seed
    return f"{f['mean']:.{digits}f}{half}"


def summary_section(summary: dict[str, Any]) -> list[str]:
    """Each row's figures as mean ± 95 % CI over seeds, and the differences to the references that are significant."""
    rows = summary["rows"]
    names = [n for n in dict.fromkeys(k for r in rows for k in r["figures"])]
    units = {n: r["figures"][n]["unit"] for r in rows for n in r["figures"]}
    lines = [
        f"## Summary: mean ± 95 % CI over {summary['seeds']} seed(s)",
        "",
        "Each figure's baseline is in its header (chance AUC 0.5; the inversion's flat mean-intensity guess). The "
        "model of each run is the round with the lowest pooled validation loss (selected on validation only); "
        "'released round' says where that was in the budget.",
        "",
        "| row | " + " | ".join(f"{n} ({units[n]})" if units[n] else n for n in names) + " |",
        "|" + "---|" * (len(names) + 1),
    ]
    lines += ["| " + " | ".join([r["label"], *(_cell(r["figures"].get(n)) for n in names)]) + " |" for r in rows]
    lines += _attacks_table(rows)
    effects = summary.get("reliability", [])
    if effects:
        lines += ["", "### Reliability under injected faults (per run; change paired with the fault-free row)", ""]
        lines += ["| row | faults | faults injected | survived | rounds lost | change ± 95 % CI | p |"]
        lines += ["|---|---|---|---|---|---|---|"]
        for e in effects:
            c = e.get("change")
            change = f"{c['metric']} {_signed(c)}" if c else "no fault-free row"
            p = f"{c['p']:.3f}" if c and c["p"] == c["p"] else "–"
            lines.append(
                f"| {e['row']} | `{e['faults']}` | {_cell(e['faults injected'])} | {_cell(e['survived'])} | "
                f"{_cell(e['rounds lost'])} | {change} | {p} |"
            )
    comparisons = summary.get("comparisons", [])
    if comparisons:
        lines += ["", "### Differences to the reference rows (paired over seeds, two-sided t-test, p < 0.05)", ""]
        lines += ["| row | reference | figure | difference ± 95 % CI | p | significant |", "|---|---|---|---|---|---|"]
        for c in comparisons:
            half = "" if c["ci95"] != c["ci95"] else f" ± {c['ci95']:.3f}"
            lines.append(
                f"| {c['row']} | {c['reference']} | {c['figure']} | {c['difference']:+.3f}{half} | {c['p']:.3f} | "
                f"{'**yes**' if c['significant'] else 'no (not shown with these seeds)'} |"
            )
    return lines


def _attacks_table(rows: list[dict[str, Any]]) -> list[str]:
    """Every leakage and security number of the audit with its interval over seeds, beside its null and control."""
    if not any(r.get("attacks") for r in rows):
        return []
    lines = [
        "",
        "### Every attack figure (mean ± 95 % CI over seeds; nulls and positive controls are the rows that say so)",
        "",
        "| row | figure | value | seeds |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines += [f"| {r['label']} | {name} | {_cell(f)} | {f['n']} |" for name, f in r.get("attacks", {}).items()]
    return lines


def _signed(f: dict[str, Any]) -> str:
    half = "" if f["ci95"] != f["ci95"] else f" ± {f['ci95']:.3f}"
    return f"{f['mean']:+.3f}{half}"


def threat_section(results: list[dict[str, Any]]) -> list[str]:
    """Who sees what, per protocol and mechanism of the bench's rows (from each result's ``privacy.threat``)."""
    parties = ("coordinator", "another site", "eavesdropper")
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results:
        if r["privacy"].get("threat"):
            seen.setdefault((r["protocol"], r["privacy"].get("mechanism", "none")), r["privacy"]["threat"])
    if not seen:
        return []
    lines = ["", "## Threat matrix (who sees what; the audit attacks each party's view)", ""]
    lines += ["| protocol | mechanism | " + " | ".join(parties) + " | active coordinator | mechanism's effect |"]
    lines += ["|" + "---|" * (len(parties) + 4)]
    for (protocol, mechanism), m in seen.items():
        cells = [f"`{protocol}`", mechanism, *(m[p]["sees"] for p in parties), m["active coordinator"]["survives"]]
        lines.append("| " + " | ".join([*cells, m.get("mechanism", {}).get("note", "")]) + " |")
    return lines


def write_plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        metric = r["performance"]["metric"]
        hist = r["performance"]["history"]
        ax.plot(
            [h["round"] for h in hist],
            [h["val"].get(metric) for h in hist],
            marker="o",
            ms=3,
            label=r.get("label", r["protocol"]),
        )
    ax.set_xlabel("round (SWT: site stage)")
    ax.set_ylabel(f"validation {results[0]['performance']['metric']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_privacy_plot(results: list[dict[str, Any]], path: Path) -> None:
    """Privacy-utility: each row's measured leakage (MIA AUC, inversion PSNR) against its test accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (key, chance)
        for key, chance in (("MIA AUC", 0.5), ("inversion PSNR dB", None))
        if any(isinstance(r["privacy"].get("leakage"), dict) and key in r["privacy"]["leakage"] for r in results)
    ] or [("MIA AUC", 0.5)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for ax, (key, chance) in zip(axes[0], panels):
        for r in results:
            leak, perf = r["privacy"].get("leakage"), r["performance"]["final"]
            if isinstance(leak, dict) and key in leak and perf.get(r["performance"]["metric"]) is not None:
                x, y = leak[key], perf[r["performance"]["metric"]]
                ax.scatter(x, y, s=25)
                ax.annotate(
                    r.get("label", r["protocol"]), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
                )
        if chance is not None:
            ax.axvline(chance, color="grey", ls="--", lw=0.8, label="chance")
        else:  # the inversion's nulls and control, averaged over the rows that carry them
            for name, style in (("null (flat guess)", "--"), ("positive control", ":")):
                vals = [
                    r["privacy"]["leakage"][f"{key}, {name}"]
                    for r in results
                    if isinstance(r["privacy"].get("leakage"), dict) and f"{key}, {name}" in r["privacy"]["leakage"]
                ]
                if vals:
                    ax.axvline(sum(vals) / len(vals), color="grey", ls=style, lw=0.8, label=name)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xlabel(key + (" (0.5 = chance)" if chance else ""))
        ax.set_ylabel(f"test {results[0]['performance']['metric']}")
        ax.grid(alpha=0.3)
    fig.suptitle("leakage against accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_short_report(
    results: list[dict[str, Any]], summary: dict[str, Any], path: Path, *, plots: list[str] = ()
) -> None:
    """report.md: the summary over seeds, the crossover's answer if swept, and links to everything else."""
    from privmed.bench import crossover

    lines = [
        "# privmed bench",
        "",
        "The full report is [report.html](report.html): one self-contained file (the summary coloured against the "
        "centralised reference, the review's Tables 1–3 measured beside each paper's figure, the CWT ↔ FL "
        "crossover, every plot, the threat matrix and the details behind each row). The details in Markdown: "
        "[details.md](details.md); every run: results.json, summary.json, and `<run>/result.json`, "
        "`<run>/audit.json`.",
        "",
        *summary_section(crossover.without_crossover(summary, results)),
    ]
    cells = crossover.table(crossover.sweep(results))
    if cells:
        lines += ["", "## CWT ↔ FL crossover (time to target; the tables are in report.html)", ""]
        lines += ["| skew | link | FedAvg reaches the common level sooner than CWT |", "|---|---|---|"]
        lines += [f"| {a['skew']} | {a['link']} | {crossover.answer_text(a)} |" for a in crossover.answer(cells)]
    if plots:
        lines += ["", "Plots: " + ", ".join(f"[{p}]({p})" for p in plots)]
    path.write_text("\n".join(lines) + "\n")
