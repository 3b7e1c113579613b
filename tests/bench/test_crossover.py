"""The CWT ↔ FL crossover's time model and its answer, on hand-made result dicts (no training)."""

import pytest

from privmed.bench import crossover
from privmed.bench.crossover import LINKS, Link, answer, crossover_rows, round_seconds, sweep, table, to_target
from privmed.config import RunConfig

PARAMS = 1000  # a model of 4,000 float32 bytes


def result(protocol, schedule, sites, vals, *, site_s=0.2, skew="natural", seed=0):
    """A run of ``len(vals)`` rounds: each site trains ``site_s`` s a round, the coordinator 0.1 s (so a round takes
    0.1 + sites x site_s in-process), one model goes down and up per site."""
    round_s = 0.1 + sites * site_s
    per_round = {str(i + 1): {"up": 4 * PARAMS * sites, "down": 4 * PARAMS * sites} for i in range(len(vals))}
    return {
        "protocol": protocol,
        "seed": seed,
        "config": {"name": f"crossover-{protocol}-{sites}", "data": {"sites": sites, "split": skew}},
        "dataset": {"distribution": [{}] * sites},
        "model": {"parameters": PARAMS},
        "scalability": {"schedule": schedule},
        "runtime": {"site_seconds": {f"site-{i}": site_s * len(vals) for i in range(sites)}},
        "communication": {"per_round": per_round},
        "performance": {
            "history": [{"round": i + 1, "seconds": round_s, "val": {"auroc": v}} for i, v in enumerate(vals)]
        },
    }


SLOW = Link("slow", bandwidth=8e3, latency=0.5, coordinator_bandwidth=1e9)  # 1 kB/s: one model takes 4 s


def test_sequential_rounds_pay_every_hop_parallel_rounds_one_round_trip():
    cwt = result("cwt", "sequential", 4, [0.6])
    fl = result("fedavg", "parallel", 4, [0.6])
    # CWT: 0.9 s measured + 8 messages x 0.5 s latency + 32,000 bytes at 1 kB/s
    assert round_seconds(cwt, SLOW) == [pytest.approx(0.9 + 8 * 0.5 + 32.0)]
    # FedAvg: the coordinator's 0.1 s + the slowest site's 0.2 s, then one site's round trip: 2 x 0.5 s + 8 s
    assert round_seconds(fl, SLOW) == [pytest.approx(0.1 + 0.2 + 2 * 0.5 + 8.0)]
    # the coordinator's own link binds when it is the narrower one
    narrow = Link("narrow", bandwidth=1e9, latency=0.0, coordinator_bandwidth=8e3)
    assert round_seconds(fl, narrow) == [pytest.approx(0.3 + 32.0)]
    # a run that waited half its wall time for a busy CPU counts half its measured seconds as compute
    cwt["runtime"].update(wall_seconds=10.0, cpu_seconds=5.0)
    assert round_seconds(cwt, SLOW) == [pytest.approx(0.45 + 8 * 0.5 + 32.0)]


def test_time_to_target_stops_at_the_first_round_that_reaches_it():
    r = result("fedavg", "parallel", 4, [0.5, 0.72, 0.9])
    got = to_target(r, SLOW, ("auroc", 0.7))
    assert got["round"] == 2 and got["bytes"] == 2 * 2 * 4 * PARAMS * 4
    assert got["seconds"] == pytest.approx(2 * round_seconds(r, SLOW)[0])
    assert to_target(r, SLOW, ("auroc", 0.95))["seconds"] is None


def test_fedavg_overtakes_cwt_once_its_parallel_rounds_beat_one_sequential_cycle():
    sites = (4, 8, 16, 32)
    runs = [result("cwt", "sequential", n, [0.8], skew=k) for n in sites for k in ("natural", "dirichlet:0.1")]
    runs += [result("fedavg", "parallel", n, [0.5, 0.5, 0.5, 0.8]) for n in sites]  # target at round 4
    runs += [result("fedavg", "parallel", n, [0.5] * 4, skew="dirichlet:0.1") for n in sites]  # never
    found = {(a["skew"], a["link"]): a["fedavg_from_sites"] for a in answer(table(sweep(runs, ("auroc", 0.7))))}
    # 1 ms, 1 Gbit/s: compute decides: CWT's one cycle takes 0.1 + 0.2 n s, FedAvg's 4 rounds 4 x 0.3 s:
    # 0.9 < 1.2 at 4 sites, 1.7 > 1.2 at 8
    lan = LINKS[0].name
    assert found["natural", lan] == 8
    assert found["dirichlet:0.1", lan] is None


def test_the_sweep_spans_sites_skews_and_the_four_protocols():
    rows = crossover_rows(RunConfig())
    got = {(c.protocol, c.data.sites, c.data.split) for _, c in rows}
    assert len(rows) == len(got) == 4 * 4 * 4
    assert {s for _, s, _ in got} == {4, 8, 16, 32} and {p for p, _, _ in got} == {"cwt", "swt", "fedavg", "snt"}
    assert {k for _, _, k in got} == {"natural", "dirichlet:0.1", "dirichlet:1", "dirichlet:100"}
    assert all(c.run_name.startswith(crossover.PREFIX) and c.data.image_size == 16 for _, c in rows)
    assert {c.privacy.get("mechanism") for _, c in rows if c.protocol == "snt"} == {"aes-gcm"}


def test_by_default_each_cell_races_to_the_level_both_fedavg_and_cwt_reach():
    cwt = result("cwt", "sequential", 4, [0.6, 0.8, 0.9])
    fl = result("fedavg", "parallel", 4, [0.7, 0.75, 0.7])
    assert crossover.common_level([cwt, fl]) == 0.75
    recs = [x for x in sweep([cwt, fl]) if x["link"] == LINKS[0].name]
    assert {x["protocol"]: x["round"] for x in recs} == {"cwt": 2, "fedavg": 2}
    # a pair member that never learns leaves the cell without a target, not with a meaningless one
    flat = result("fedavg", "parallel", 4, [0.5, 0.55, 0.52])
    assert crossover.common_level([cwt, flat]) is None
    assert all(x["seconds"] is None for x in sweep([cwt, flat]))
    assert crossover.answer_text(answer(table(sweep([cwt, flat])))[0]).startswith("no common level")


def test_the_section_shows_the_measured_seconds_and_bytes():
    runs = [result("cwt", "sequential", 4, [0.6, 0.8]), result("fedavg", "parallel", 4, [0.8, 0.9])]
    text = "\n".join(crossover.crossover_section(runs))
    cwt = to_target(runs[0], LINKS[0], ("auroc", 0.8))  # the common level: FedAvg's best is higher
    row = next(line for line in text.splitlines() if line.startswith("| natural | 4 | 0.800 |"))
    assert f"{cwt['seconds']:.1f} / " in row and f"{cwt['bytes'] / 1e6:.1f} MB" in row
    assert "| natural | campus LAN (1 Gbit/s, 1 ms) | from 4 sites (compared at 4) |" in text
