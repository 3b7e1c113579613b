"""Privacy-Net: identity-obfuscated segmentation (Kim, Dolz, Jodoin & Desrosiers 2019).

Paper: "Privacy-Net: an adversarial approach for identity-obfuscated
segmentation of medical images" (arXiv:1909.04087). At use, a site runs the
**encoder** on each image and sends the encoding, never the image; the
server runs the **segmenter** on the encoding. The encoder was trained,
against a Siamese **discriminator** that tries to tell whether two encodings
come from the same patient, to keep what segmentation needs and lose who the
patient is. The networks and the adversarial step: :mod:`privmed.obfuscation`
(which states what is faithful to the paper and what differs).

Training here: every round each site trains the three networks on its own
patients (the discriminator's same/different labels are patient identities,
which never leave the site) with the adversarial weight ``lam`` (λ, option;
0 = no adversary: an encoder-segmenter trained for Dice alone), and the
coordinator averages them as FedAvg does (:func:`privmed.protocols.fedavg.run`,
with its checks of every reply). The paper trains the three networks at one
place; averaging is what lets several hospitals train them without pooling
images. Run it with ``--model privacy-net --task segmentation``.

Measured: Dice of S(E(x)) on each site's test images (the harness, as for
any segmenter) and re-identification by a fresh attacker trained after the
fact on the frozen encoder's outputs (the audit's ``reidentification``
attack, :mod:`privmed.attacks.reidentification`); the trade-off over λ is
``benchmarks/privacy_net_tradeoff.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from privmed.errors import PrivmedError
from privmed.obfuscation import D_STEPS_KEY, LAM_KEY
from privmed.options import Options
from privmed.protocols import fedavg
from privmed.protocols.base import ProtocolContext, ProtocolOutput, ProtocolSpec, node_ids
from privmed.threat import AGGREGATE, UPDATE, View


@dataclass(frozen=True)
class PrivacyNetOptions(Options):
    lam: float = 1.0  # λ: weight of the adversarial (confusion) term in the encoder's loss; 0 = no adversary
    d_steps: int = 5  # discriminator steps per encoder-segmenter step (one let the encoder fool a weak D only)
    min_sites: int = 1  # as FedAvg's: fewest usable replies a round averages

    def __post_init__(self) -> None:
        if not self.lam >= 0:
            raise PrivmedError(f"lam (the adversarial weight) must be >= 0, got {self.lam}")
        if self.min_sites < 1:
            raise PrivmedError(f"min_sites must be >= 1, got {self.min_sites}")
        if self.d_steps < 1:
            raise PrivmedError(f"d_steps (discriminator steps per encoder step) must be >= 1, got {self.d_steps}")

    def check_sites(self, n_sites: int) -> None:
        if self.min_sites > n_sites:
            raise PrivmedError(f"min_sites={self.min_sites} is more than the run's {n_sites} sites")


class WithLam(FedAvg):
    """Flower's FedAvg whose train instruction also carries λ and the discriminator's steps per encoder step."""

    def __init__(self, lam: float, d_steps: int, **kw) -> None:
        super().__init__(**kw)
        self.lam, self.d_steps = lam, d_steps

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config[LAM_KEY] = float(self.lam)
        config[D_STEPS_KEY] = int(self.d_steps)
        return super().configure_train(server_round, arrays, config, grid)


def run(ctx: ProtocolContext) -> ProtocolOutput:
    if not isinstance(ctx.initial, ArrayRecord) or not any(k.startswith("encoder.") for k in ctx.initial):
        raise PrivmedError("the privacy-net protocol trains Privacy-Net's networks: use --model privacy-net")
    n = len(node_ids(ctx))
    strategy = WithLam(
        ctx.options.lam,
        ctx.options.d_steps,
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=n,
        min_available_nodes=n,
    )
    return fedavg.run(ctx, strategy=strategy)


SPEC = ProtocolSpec(
    name="privacy-net",
    technique="kim2019privacy",
    run=run,
    views={
        "coordinator": View(
            UPDATE,
            "each site's encoder, segmenter and discriminator weights every round; at use, each image's encoding",
        ),
        "another site": View(AGGREGATE, "the averaged encoder, segmenter and discriminator after every round"),
        "eavesdropper": View(UPDATE, "each site's networks and, at use, the encodings, in the clear without TLS"),
    },
    active_coordinator="nothing: it sees every update and can send each site an encoder of its choosing",
    schedule="parallel",
    options=PrivacyNetOptions,
    extra_attacks=("reidentification",),
    deploy_refusal=(
        "a deployed run's networks differ from the in-process run of the same "
        "seed (max weight difference 0.35 after 2 rounds, tests/engine/test_site_grid.py), so the deployed site "
        "training is not yet the tested one; run it in-process"
    ),
)
