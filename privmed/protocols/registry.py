"""Protocol names a user can type: one line per protocol, each module's ``SPEC``."""

from __future__ import annotations

from privmed.errors import unknown_name
from privmed.protocols import (
    admission,
    cwt,
    dssgd,
    ensemble,
    fedavg,
    he_fedavg,
    more,
    privacy_net,
    secagg_fedavg,
    single,
    split,
    swt,
)
from privmed.protocols.base import ProtocolSpec
from privmed.protocols.weight_transmission import fnt, snt

PROTOCOLS: dict[str, ProtocolSpec] = {
    spec.name: spec
    for spec in (
        single.CENTRALISED,
        single.SINGLE,
        ensemble.SPEC,
        swt.SPEC,
        cwt.SPEC,
        fedavg.SPEC,
        he_fedavg.SPEC,
        secagg_fedavg.SPEC,
        snt.SPEC,
        fnt.SPEC,
        dssgd.SPEC,
        admission.SPEC,
        privacy_net.SPEC,
        more.SPEC,
        split.SPEC,
    )
}


def get_protocol(name: str) -> ProtocolSpec:
    if name not in PROTOCOLS:
        raise unknown_name("protocol", name, list(PROTOCOLS))
    return PROTOCOLS[name]
