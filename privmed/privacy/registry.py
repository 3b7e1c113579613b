"""Privacy mechanism names a user can type."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from privmed.errors import PrivmedError, unknown_name
from privmed.privacy import dp, dp_fedavg, p3sgd
from privmed.privacy.base import Mechanism
from privmed.protocols.he_fedavg import HEMechanism
from privmed.protocols.more import MoreMechanism
from privmed.protocols.secagg_fedavg import SecAggMechanism
from privmed.protocols.weight_transmission.site import WeightEncryption

# name -> factory(options) -> Mechanism
MECHANISMS: dict[str, Callable[[dict[str, Any]], Mechanism]] = {
    "none": lambda options: _no_mechanism(options),
    "he-paillier": lambda options: HEMechanism("paillier", options),
    "he-ckks": lambda options: HEMechanism("ckks", options),
    "he-stream": lambda options: HEMechanism("stream", options),
    "aes-gcm": WeightEncryption,
    "secagg": SecAggMechanism,
    "dp-sgd": dp.make,
    "p3sgd": p3sgd.make,
    "dp-fedavg": dp_fedavg.make,
    "more": MoreMechanism,
}


def _no_mechanism(options: dict[str, Any]) -> Mechanism:
    if options:  # e.g. --epsilon without --privacy: never train without the protection asked for
        raise PrivmedError(
            f"privacy options {', '.join(sorted(options))} given without a mechanism; add --privacy NAME "
            f"(one of {', '.join(n for n in MECHANISMS if n != 'none')})"
        )
    return Mechanism()


def make_mechanism(options: dict[str, Any]) -> Mechanism:
    """``options["mechanism"]`` names the mechanism; the rest are its parameters."""
    opts = dict(options)
    name = opts.pop("mechanism", "none")
    if name not in MECHANISMS:
        raise unknown_name("privacy mechanism", name, list(MECHANISMS))
    return MECHANISMS[name](opts)
