"""One institution alone, and centralised (pooled) training.

The review's two reference points: each hospital training only on its own
data (the lower bound every collaborative protocol must beat), and pooling
every hospital's data in one place (the non-private upper bound; the
harness builds a one-site grid holding the pooled data and counts the raw
data's bytes as communication). Option ``site``: which site trains alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from privmed.errors import PrivmedError
from privmed.options import Options
from privmed.protocols.base import ProtocolContext, ProtocolOutput, ProtocolSpec, node_ids, train_at
from privmed.threat import NOTHING, RAW, View


@dataclass(frozen=True)
class SingleOptions(Options):
    site: int = 0  # which site trains alone

    def __post_init__(self) -> None:
        if self.site < 0:
            raise PrivmedError(f"site index must be >= 0, got {self.site}")

    def check_sites(self, n_sites: int) -> None:
        if self.site >= n_sites:
            raise PrivmedError(f"site index {self.site} out of range: this run has sites 0..{n_sites - 1}")


def _train_alone(ctx: ProtocolContext, node: int) -> ProtocolOutput:
    arrays = ctx.initial
    for rnd in range(ctx.start_round, ctx.settings.rounds + 1):
        arrays = train_at(ctx, node, arrays, rnd) or arrays
        ctx.evaluate_fn(rnd, arrays)
    return ProtocolOutput(arrays)


def run(ctx: ProtocolContext) -> ProtocolOutput:
    """One site, the ``site``-th, trains alone."""
    return _train_alone(ctx, node_ids(ctx)[ctx.options.site])


def run_centralised(ctx: ProtocolContext) -> ProtocolOutput:
    """The one party of a pooled grid trains on everyone's data."""
    return _train_alone(ctx, node_ids(ctx)[0])


CENTRALISED = ProtocolSpec(
    name="centralised",
    technique="centralised",
    run=run_centralised,
    views={
        "coordinator": View(RAW, "every site's raw images and labels"),
        "another site": View(NOTHING, "nothing (the sites send their data, not a model)"),
        "eavesdropper": View(RAW, "every site's raw images and labels, in the clear without TLS"),
    },
    active_coordinator="nothing: it holds all the data",
    schedule="one trainer",
    pooled=True,
    traffic="raw data",
    deploy_refusal=(
        "centralised training pools every hospital's raw images at one party; a deployment exists to avoid that "
        "(run it in-process as the non-private reference)"
    ),
)
SINGLE = ProtocolSpec(
    name="single",
    technique="single-site",
    run=run,
    views={
        "coordinator": View(NOTHING, "nothing (one site trains alone)"),
        "another site": View(NOTHING, "nothing (one site trains alone)"),
        "eavesdropper": View(NOTHING, "nothing (one site trains alone)"),
    },
    active_coordinator="everything: nothing is sent",
    schedule="one trainer",
    options=SingleOptions,
    traffic="none",
    trainers=lambda o, n: (o.site,),
    not_applicable={
        "poisoning": "one site trains alone; there are no other sites to poison it",
    },
)
