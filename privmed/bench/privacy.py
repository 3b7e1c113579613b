"""DP rows of the bench, the privacy–utility sweep and its plot.

``dp_rows`` are the default suite's DP rows (FedAvg + site-level DP,
CWT + DP-SGD as in Beaulieu-Jones 2018, DSSGD, centralised P3SGD).
``privacy_suite`` is the sweep behind the privacy–utility plot: performance
against ε ∈ {1, 3, 8, ∞} for sample-level (DP-SGD) and patient-level (P3SGD)
DP, centralised, FedAvg and CWT, and DSSGD's accuracy against θu. It takes
longer than the default suite, so it runs as ``privmed bench --suite privacy``.
Both are computed from result dicts only.

DP rows run on ten times the default phantom's patients (``DP_SCALE``) with
DP-SGD's own step size (``dp_base``): on the default 392 training images every
DP row at ε ≤ 8 predicted the majority class whatever the step (Adam or SGD,
lr 1e-3 to 1, batch 32 to 128; measured), because the noise, σC/B per
coordinate, drowns a clipped gradient that few images average. Each DP row has
a non-private reference on the same data and settings.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from privmed.config import RunConfig

EPSILONS = (1.0, 3.0, 8.0)
THETA_U = (0.01, 0.1, 1.0)
DELTA = 1e-5
DP_SCALE = 10  # phantom patients x10: 3,900 training images instead of 392
DP_LR, DP_BATCH = 1e-2, 64  # tuned for centralised DP-SGD at ε=3 (Adam; 1e-3/32 left it at the majority class)


def dp_base(base: RunConfig) -> RunConfig:
    """``base`` on DP_SCALE times the patients, with DP-SGD's step size and batch."""
    return dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, patients_scale=DP_SCALE),
        train=dataclasses.replace(base.train, lr=DP_LR, batch_size=DP_BATCH),
    )


def _dp(base: RunConfig, protocol: str, mechanism: str, epsilon: float, **extra: Any) -> tuple[RunConfig, str]:
    unit = {"dp-sgd": "sample", "p3sgd": "patient", "dp-fedavg": "site"}[mechanism]
    return dataclasses.replace(
        base,
        protocol=protocol,
        name=f"{protocol}-{mechanism}-eps{epsilon:g}",
        privacy={"mechanism": mechanism, "epsilon": epsilon, "delta": DELTA, **extra},
    ), unit


def dp_rows(base: RunConfig) -> list[tuple[str, RunConfig]]:
    """The default suite's DP rows (ε = 3, on :func:`dp_base`'s data and settings, with its no-DP reference); DSSGD."""
    dp = dp_base(base)
    rows = [
        (
            f"centralised, {DP_SCALE}x patients (no DP)",
            dataclasses.replace(dp, protocol="centralised", name=f"centralised-x{DP_SCALE}"),
        )
    ]
    for protocol, mech, label in (
        ("fedavg", "dp-fedavg", "fedavg + DP (site"),
        ("cwt", "dp-sgd", "cwt + DP-SGD (sample"),
        ("centralised", "p3sgd", "centralised P3SGD (patient"),
    ):
        cfg, _ = _dp(dp, protocol, mech, 3.0)
        rows.append((f"{label}, ε=3, {DP_SCALE}x patients)", cfg))
    rows.append(
        ("dssgd θu=0.1", dataclasses.replace(base, protocol="dssgd", options={"theta_u": 0.1}, name="dssgd-tu0.1"))
    )
    return rows


def privacy_suite(base: RunConfig) -> list[tuple[str, RunConfig]]:
    """ε sweep for sample- and patient-level DP in centralised, FedAvg and CWT; DSSGD over θu; ε = ∞ baselines.

    Every row runs on :func:`dp_base`'s data and settings.
    """
    base = dp_base(base)
    rows = [
        (f"{p} (ε=∞)", dataclasses.replace(base, protocol=p, name=f"{p}-nodp"))
        for p in ("centralised", "fedavg", "cwt")
    ]
    for eps in EPSILONS:
        for protocol in ("centralised", "fedavg", "cwt"):
            for mech in ("dp-sgd", "p3sgd"):
                cfg, unit = _dp(base, protocol, mech, eps)
                rows.append((f"{protocol} {mech} ({unit}, ε={eps:g})", cfg))
    rows += [
        (f"dssgd θu={t:g}", dataclasses.replace(base, protocol="dssgd", options={"theta_u": t}, name=f"dssgd-tu{t:g}"))
        for t in THETA_U
    ]
    return rows


def _score(r: dict[str, Any]) -> float | None:
    return r["performance"]["final"].get(r["performance"]["metric"])


def _setting(r: dict[str, Any]) -> str:
    """Protocol, data and training settings: a DP row's ε = ∞ point is the non-private run with the same ones."""
    return json.dumps([r["protocol"], r["config"]["data"], r["config"]["train"]], sort_keys=True)


def curves(results: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """(protocol, unit) -> [(ε, performance)], with ε = inf for the protocol's non-private run on the same setting."""
    out: dict[str, list[tuple[float, float]]] = {}
    # non-private runs by setting (protocol included: a DP row finds its own protocol's reference)
    plain = {_setting(r): _score(r) for r in results if r["privacy"].get("epsilon") is None}
    reference: dict[str, float | None] = {}
    for r in results:
        p = r["privacy"]
        if (
            p.get("epsilon") is None
            or p.get("unit") not in ("sample", "patient", "site")
            or p.get("mechanism") == "dssgd-svt"
        ):
            continue
        key = f"{r['protocol']}, {p['unit']}-level"
        out.setdefault(key, []).append((p.get("target_epsilon") or p["epsilon"], _score(r)))
        reference[key] = plain.get(_setting(r))
    for key, pts in out.items():
        if reference[key] is not None:
            pts.append((math.inf, reference[key]))
        pts.sort()
    return out


def dssgd_points(results: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(θu, performance) of the non-DP DSSGD runs."""
    return sorted(
        (r["privacy"]["shared_fraction_up"], _score(r))
        for r in results
        if "shared_fraction_up" in r["privacy"] and r["privacy"].get("epsilon") is None
    )


def write_epsilon_plot(results: list[dict[str, Any]], path: Path) -> bool:
    """Performance vs ε per (protocol, DP unit), and DSSGD's performance vs θu. False if nothing to plot."""
    series, dssgd = curves(results), dssgd_points(results)
    if not series and not dssgd:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = [e for pts in series.values() for e, _ in pts if math.isfinite(e)] or [1.0]
    inf_x = max(finite) * 2.5
    if series:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    else:  # DSSGD only: no ε axis to draw
        fig, only = plt.subplots(1, 1, figsize=(4.5, 4.2))
        axes = [None, only]
    ax = axes[0]
    for key, pts in sorted(series.items()):
        ax.plot([inf_x if math.isinf(e) else e for e, _ in pts], [s for _, s in pts], marker="o", label=key)
    if ax is not None:
        ax.set_xscale("log")
        ticks = sorted(set(finite)) + [inf_x]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks[:-1]] + ["∞"])
        ax.set_xticks([], minor=True)  # no log-scale minor labels between the ε values
        ax.set_xlabel("ε (δ = 1e-5; unit in legend)")
        ax.set_ylabel(f"test {results[0]['performance']['metric']}")
        ax.set_title("privacy–utility")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[1]
    if dssgd:
        ax.plot([t for t, _ in dssgd], [s for _, s in dssgd], marker="s", color="k")
        ax.set_xscale("log")
    ax.set_xlabel("DSSGD θu (fraction uploaded)")
    ax.set_title("selective sharing")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def privacy_section(results: list[dict[str, Any]], plot_name: str) -> list[str]:
    """Markdown lines: the privacy–utility table (ε, unit, performance) and the plot."""
    series = curves(results)
    lines = [
        "",
        "## Privacy–utility",
        "",
        "| protocol, DP unit | "
        + " | ".join(
            "ε=" + ("∞" if math.isinf(e) else f"{e:g}") for e in sorted({e for pts in series.values() for e, _ in pts})
        )
        + " |",
    ]
    eps_all = sorted({e for pts in series.values() for e, _ in pts})
    lines.append("|---|" + "---|" * len(eps_all))
    for key, pts in sorted(series.items()):
        d = dict(pts)
        lines.append(f"| {key} | " + " | ".join("" if d.get(e) is None else f"{d[e]:.3f}" for e in eps_all) + " |")
    dssgd = dssgd_points(results)
    if dssgd:
        lines += ["", "DSSGD accuracy vs θu: " + ", ".join(f"θu={t:g}: {s:.3f}" for t, s in dssgd)]
    return lines + ["", f"![privacy-utility]({plot_name})"]
