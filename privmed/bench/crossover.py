"""The CWT ↔ FL crossover: when does federated averaging reach a target sooner than cyclic weight transfer?

The review (section 4.2, on Chang 2018 and Sheller 2018) asks for "the
threshold after which FL becomes feasible": CWT is the simpler technique, but
its sites train one after the other, while FedAvg's sites train at once and
pay a coordinator round trip each. This module sweeps the number of sites
(4 → 32), the data skew (the phantom's natural sites; Dirichlet label skew
α ∈ {0.1, 1, 100}) and the link between each site and the coordinator, and
reports, for CWT, SWT, FedAvg and SNT, the simulated time and the bytes to
reach a validation target.

Simulated time = measured compute + modelled transfer. Training runs
in-process (one site after another), so every round's measured seconds are
the sequential compute; the engine's traffic counts give the bytes. Measured
seconds are scaled by the run's CPU/wall fraction (:func:`busy_fraction`), so
the time a run spent waiting for a shared machine's CPU is not counted as
compute. Per round:

- sequential protocols (CWT, SWT, SNT): the model visits the sites in turn,
  each hop a download and an upload over that site's link, so
  ``T = measured round seconds + Σ_messages (latency + 8·bytes / bandwidth)``
  (messages = the round's bytes over one float32 model's, rounded);
- parallel protocols (FedAvg): the sites train at once, so the round's
  compute is the coordinator's share (round seconds − Σ site seconds) plus
  the slowest site, and the transfer is one site's round trip on its own
  link, or the coordinator's shared link if that is slower:
  ``T = (round − Σ c_i + max c_i) + max(2·latency + 8·b_site / bw_site, 8·b_round / bw_coordinator)``
  with ``c_i`` a site's measured training seconds per round.

Links are symmetric, one per site↔coordinator pair (:data:`LINKS`: a few
hospital settings); nothing else (TLS handshakes, queueing, stragglers) is
modelled. The compute is kept small so the sweep runs on a laptop: 16×16
images, :data:`ROUNDS` rounds, the default CNN, one local epoch, one seed by
default. Natural skew: each added site brings its own patients (the phantom's
natural sites, 60 down to 15 patients each), so data grow with sites as in a
real federation; Dirichlet skew: the default cohort (150 patients) is split
over more and more sites, as in Sheller 2018's 4 → 32 simulation. Everything here is computed
from result dicts (the ``crossover-`` rows of a bench), never by re-running.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any

from privmed.config import RunConfig

SITES = (4, 8, 16, 32)
SKEWS = ("natural", "dirichlet:0.1", "dirichlet:1", "dirichlet:100")
PAIR = ("fedavg", "cwt")  # the question: where does FedAvg overtake CWT
OTHERS = ("swt", "snt")
PROTOCOLS = ("cwt", "swt", "fedavg", "snt")
MECHANISMS = {"snt": "aes-gcm"}  # SNT as Phuong 2019 runs it: weights encrypted with the sites' shared key
ROUNDS = 10
IMAGE_SIZE = 16
METRIC = "auroc"  # the runs race to a level of validation AUROC
LEARNS = 0.6  # below this best validation AUROC a run has not learnt: no common target in its cell
PREFIX = "crossover-"  # run names of the sweep's rows: the report finds them by it


@dataclass(frozen=True)
class Link:
    """One site↔coordinator link: symmetric bandwidth (bit/s) and one-way latency (s)."""

    name: str
    bandwidth: float
    latency: float
    coordinator_bandwidth: float  # the coordinator's own link, shared by all sites' transfers at once

    def __post_init__(self) -> None:
        if self.bandwidth <= 0 or self.coordinator_bandwidth <= 0 or self.latency < 0:
            raise ValueError(f"link {self.name!r}: bandwidths must be > 0 and latency >= 0")


LINKS = (
    Link("campus LAN (1 Gbit/s, 1 ms)", 1e9, 0.001, 10e9),
    Link("research network (100 Mbit/s, 20 ms)", 100e6, 0.020, 1e9),
    Link("clinic broadband (10 Mbit/s, 50 ms)", 10e6, 0.050, 1e9),
    Link("intercontinental VPN (20 Mbit/s, 150 ms)", 20e6, 0.150, 1e9),
)


def _tag(skew: str) -> str:
    return skew.replace("dirichlet:", "dir")


def crossover_rows(base: RunConfig) -> list[tuple[str, RunConfig]]:
    """Every protocol at every (sites, skew), FedAvg and CWT first: 16×16 images, :data:`ROUNDS` rounds, no audit
    (run names start PREFIX). 64 runs, about 4 CPU-minutes; 30 min of wall on 2 cores shared with other jobs."""
    rows = []
    train = dataclasses.replace(base.train, rounds=ROUNDS, local_epochs=1)
    # the crossover pair first, so an interrupted sweep (kept by --resume) already answers the question
    for group in (PAIR, OTHERS):
        for skew, sites, protocol in itertools.product(SKEWS, SITES, group):
            data = dataclasses.replace(base.data, image_size=IMAGE_SIZE, sites=sites, split=skew)
            privacy = {"mechanism": MECHANISMS[protocol]} if protocol in MECHANISMS else {}
            cfg = dataclasses.replace(
                base,
                protocol=protocol,
                data=data,
                train=train,
                privacy=privacy,
                name=f"{PREFIX}{protocol}-{sites}-{_tag(skew)}",
            )
            rows.append((f"{protocol}, {sites} sites, {skew.replace('dirichlet:', 'Dirichlet α=')}", cfg))
    return rows


def is_crossover(r: dict[str, Any]) -> bool:
    return str(r["config"].get("name", "")).startswith(PREFIX)


def is_sweep(cfg: RunConfig) -> bool:
    """A run config of the sweep (:func:`crossover_rows`)."""
    return cfg.run_name.startswith(PREFIX)


def busy_fraction(r: dict[str, Any]) -> float:
    """The run's CPU seconds over its wall seconds (at most 1): the share of a measured second that was compute.

    On a shared machine a single-threaded run waits for the CPU; scaling its measured seconds by this fraction
    counts its compute, not its waiting. CPU time includes the final test evaluation that wall time leaves out, so
    the fraction errs high (compute is overstated, never understated)."""
    t = r.get("runtime", {})
    wall, cpu = t.get("wall_seconds"), t.get("cpu_seconds")
    return 1.0 if not wall or cpu is None else min(1.0, cpu / wall)


def without_crossover(summary: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary less the crossover sweep's rows (their own section reports them; other data, no audit)."""
    swept = {r["label"] for r in results if is_crossover(r)}
    if not swept:
        return summary
    return {
        **summary,
        "rows": [r for r in summary["rows"] if r["label"] not in swept],
        "comparisons": [c for c in summary.get("comparisons", []) if c["row"] not in swept],
    }


def round_seconds(r: dict[str, Any], link: Link) -> list[float]:
    """Simulated seconds of each round of one run over ``link`` (the model in the module docstring)."""
    n = len(r["dataset"]["distribution"])
    hist = r["performance"]["history"]
    per_round = r["communication"].get("per_round", {})
    busy = busy_fraction(r)
    site_seconds = [busy * s for s in r["runtime"].get("site_seconds", {}).values()]
    rounds = max(len(hist), 1)
    out = []
    for h in hist:
        seconds = busy * h["seconds"]
        b = per_round.get(str(h["round"]), {"up": 0, "down": 0})
        total = b["up"] + b["down"]
        if r["scalability"].get("schedule") == "parallel":
            per_site = [s / rounds for s in site_seconds] or [0.0]
            compute = max(seconds - sum(per_site), 0.0) + max(per_site)
            transfer = max(2 * link.latency + 8 * total / n / link.bandwidth, 8 * total / link.coordinator_bandwidth)
        else:
            # messages this round: its bytes over one float32 model's (CWT/SNT: 2 per site; SWT: 2 per stage)
            messages = max(1, round(total / (4 * r["model"]["parameters"])))
            transfer = messages * link.latency + 8 * total / link.bandwidth
            compute = seconds
        out.append(compute + transfer)
    return out


def to_target(r: dict[str, Any], link: Link, target: tuple[str, float]) -> dict[str, Any]:
    """Round, simulated seconds and bytes (up + down) until validation ``target`` is first reached (None if never)."""
    metric, level = target
    times = round_seconds(r, link)
    per_round = r["communication"].get("per_round", {})
    elapsed, sent = 0.0, 0
    for h, t in zip(r["performance"]["history"], times):
        elapsed += t
        b = per_round.get(str(h["round"]), {"up": 0, "down": 0})
        sent += b["up"] + b["down"]
        if (h["val"].get(metric) or 0.0) >= level:
            return {"round": h["round"], "seconds": elapsed, "bytes": sent}
    return {"round": None, "seconds": None, "bytes": sent}


def common_level(runs: list[dict[str, Any]], metric: str = METRIC) -> float | None:
    """The validation level both of the crossover pair reach in a cell: the lower of their best values.

    None when a protocol of the pair is missing or one of them never rises to :data:`LEARNS` (no common target
    worth racing to)."""
    best = {}
    for r in runs:
        if r["protocol"] in PAIR:
            best[r["protocol"]] = max((h["val"].get(metric) or 0.0) for h in r["performance"]["history"])
    if len(best) < len(PAIR) or min(best.values()) < LEARNS:
        return None
    return min(best.values())


def sweep(results: list[dict[str, Any]], target: tuple[str, float] | None = None) -> list[dict[str, Any]]:
    """One record per (protocol, sites, skew, link, seed): time and bytes to target.

    ``target`` (metric, level) fixes the level for every cell; by default each cell (sites, skew, seed) races to
    :func:`common_level`, the level FedAvg and CWT both reach there."""
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for r in results:
        if is_crossover(r):
            d = r["config"]["data"]
            cells.setdefault((d["sites"], d["split"], r["seed"]), []).append(r)
    out = []
    for (sites, skew, seed), runs in cells.items():
        level = target or (METRIC, common_level(runs))
        for r in runs:
            for link in LINKS:
                reached = (
                    to_target(r, link, level)
                    if level[1] is not None
                    else {"round": None, "seconds": None, "bytes": None}
                )
                out.append(
                    {
                        "protocol": r["protocol"],
                        "sites": sites,
                        "skew": skew,
                        "link": link.name,
                        "seed": seed,
                        "level": level[1],
                        **reached,
                    }
                )
    return out


def _mean(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return sum(got) / len(got) if got and len(got) == len(values) else None  # a seed that never reached: None


def table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over seeds per (skew, link, sites, protocol): level raced to, seconds, round and bytes to reach it."""
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for rec in records:
        cells.setdefault((rec["skew"], rec["link"], rec["sites"], rec["protocol"]), []).append(rec)
    out = []
    for (skew, link, sites, protocol), recs in cells.items():
        out.append(
            {
                "skew": skew,
                "link": link,
                "sites": sites,
                "protocol": protocol,
                "seeds": len(recs),
                "seconds": _mean([x["seconds"] for x in recs]),
                "round": _mean([x["round"] for x in recs]),
                "bytes": _mean([x["bytes"] for x in recs]),
                "level": _mean([x["level"] for x in recs]),
            }
        )
    links = [link.name for link in LINKS]
    return sorted(
        out,
        key=lambda c: (
            SKEWS.index(c["skew"]) if c["skew"] in SKEWS else 99,
            links.index(c["link"]) if c["link"] in links else 99,
            c["sites"],
        ),
    )


def crossover_point(cells: list[dict[str, Any]], skew: str, link: str) -> int | None:
    """The fewest sites from which FedAvg reaches the common level sooner than CWT (and stays so); None if never.

    Only site counts where the pair has a common level count."""
    by = {(c["sites"], c["protocol"]): c["seconds"] for c in cells if c["skew"] == skew and c["link"] == link}
    sites = sorted(s for s in {s for s, _ in by} if all(by.get((s, p)) is not None for p in PAIR))
    faster = [by[s, PAIR[0]] < by[s, PAIR[1]] for s in sites]
    for i, s in enumerate(sites):
        if all(faster[i:]):
            return s
    return None


def answer(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (skew, link): where FedAvg overtakes CWT, and at which site counts the pair had a common level."""
    out = []
    for skew, link in dict.fromkeys((c["skew"], c["link"]) for c in cells):
        compared = sorted(
            {c["sites"] for c in cells if c["skew"] == skew and c["link"] == link and c["level"] is not None}
        )
        out.append(
            {"skew": skew, "link": link, "fedavg_from_sites": crossover_point(cells, skew, link), "compared": compared}
        )
    return out


def answer_text(a: dict[str, Any]) -> str:
    if not a["compared"]:
        return "no common level (one of the pair does not learn here)"
    at = ", ".join(map(str, a["compared"]))
    s = a["fedavg_from_sites"]
    return f"never (compared at {at} sites)" if s is None else f"from {s} sites (compared at {at})"


def write_crossover_plot(results: list[dict[str, Any]], path: Any) -> bool:
    """Time to target against sites, per skew (panels) and link (colours): FedAvg solid, CWT dashed."""
    cells = table(sweep(results))
    if not cells:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    skews = [s for s in SKEWS if any(c["skew"] == s for c in cells)] or sorted({c["skew"] for c in cells})
    fig, axes = plt.subplots(1, len(skews), figsize=(3.4 * len(skews), 3.6), sharey=True, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, skew in zip(axes[0], skews):
        for k, link in enumerate(LINKS):
            for protocol, style in (("fedavg", "-"), ("cwt", "--")):
                pts = sorted(
                    (c["sites"], c["seconds"])
                    for c in cells
                    if c["skew"] == skew
                    and c["link"] == link.name
                    and c["protocol"] == protocol
                    and c["seconds"] is not None
                )
                if pts:
                    ax.plot(
                        [p[0] for p in pts],
                        [p[1] for p in pts],
                        style,
                        marker="o",
                        ms=3,
                        color=colours[k % len(colours)],
                        label=f"{protocol}: {link.name}" if skew == skews[0] else None,
                    )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(list(SITES), [str(s) for s in SITES])
        ax.set_title(skew, fontsize=9)
        ax.set_xlabel("sites")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("simulated s to the level both reach")
    fig.legend(loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.suptitle("CWT (dashed) vs FedAvg (solid): simulated time to the validation AUROC both reach", fontsize=10)
    fig.tight_layout(rect=(0, 0.22, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _fmt_s(v: float | None) -> str:
    return "not reached" if v is None else (f"{v:.1f}" if v < 100 else f"{v:.0f}")


def crossover_section(results: list[dict[str, Any]], plot_name: str | None = None) -> list[str]:
    """Markdown lines: where FedAvg overtakes CWT per skew and link, and the time-to-level table."""
    cells = table(sweep(results))
    if not cells:
        return []
    lines = [
        "",
        "## CWT ↔ FL crossover",
        "",
        "Each cell (sites, skew) races to the validation AUROC both FedAvg and CWT reach there (the lower of their "
        f"best; no common level if either stays below {LEARNS}). Time = measured compute + modelled transfer "
        "(privmed/bench/crossover.py states the model); bytes = up + down until then. "
        f"Small compute: {IMAGE_SIZE}×{IMAGE_SIZE} images, {ROUNDS} rounds, the default CNN; mean over seeds.",
        "",
        "| skew | link | FedAvg reaches the level sooner than CWT |",
        "|---|---|---|",
    ]
    lines += [f"| {a['skew']} | {a['link']} | {answer_text(a)} |" for a in answer(cells)]
    links = " / ".join(link.name.split(" (")[0] for link in LINKS)
    lines += [
        "",
        f"Seconds to the level on each link ({links}), then the bytes sent until then (the same on every link).",
        "",
        "| skew | sites | level (val. AUROC) | " + " | ".join(PROTOCOLS) + " |",
        "|---|---|---|" + "---|" * len(PROTOCOLS),
    ]
    by = {(c["skew"], c["link"], c["sites"], c["protocol"]): c for c in cells}
    for skew, sites in dict.fromkeys((c["skew"], c["sites"]) for c in cells):
        level = next((c["level"] for c in cells if (c["skew"], c["sites"]) == (skew, sites)), None)
        row = []
        for p in PROTOCOLS:
            got = [by.get((skew, link.name, sites, p)) for link in LINKS]
            if level is None or got[0] is None:
                row.append("–")
            elif got[0]["seconds"] is None:
                row.append("not reached")
            else:
                row.append(" / ".join(_fmt_s(c["seconds"]) for c in got) + f" · {_mb(got[0]['bytes'])}")
        shown = "no common level" if level is None else f"{level:.3f}"
        lines.append(f"| {skew} | {sites} | {shown} | " + " | ".join(row) + " |")
    if plot_name:
        lines += ["", f"![CWT vs FedAvg time to the common level]({plot_name})"]
    return lines


def _mb(b: float | None) -> str:
    return "–" if b is None or (isinstance(b, float) and math.isnan(b)) else f"{b / 1e6:.1f} MB"
