"""Protocol names a user can type, and the review key of each."""

from __future__ import annotations

from collections.abc import Callable

from privmed.errors import unknown_name
from privmed.protocols import cwt, dssgd, ensemble, fedavg, fnt, he_fedavg, secagg_fedavg, single, snt, swt
from privmed.protocols.base import ProtocolContext, ProtocolOutput

# name -> (function, review technique key, what the coordinator sees)
PROTOCOLS: dict[str, tuple[Callable[[ProtocolContext], ProtocolOutput], str, str]] = {
    "centralised": (single.run, "centralised", "every site's raw images and labels"),
    "single": (single.run, "single-site", "nothing (one site trains alone)"),
    "ensemble": (ensemble.run, "chang2018-me", "each site's own model weights"),
    "swt": (swt.run, "chang2018-swt", "the model weights after each site's stage"),
    "cwt": (cwt.run, "chang2018-cwt", "the model weights after every site visit"),
    "fedavg": (fedavg.run, "mcmahan2017-fedavg", "each site's model weights after local training, every round"),
    "he-fedavg": (he_fedavg.run, "aono2017-he", "ciphertexts of each site's weighted update and of their sum; never a plaintext update"),
    "secagg-fedavg": (secagg_fedavg.run, "bell2020-secaggplus", "only the sum of the sites' masked, quantised weights"),
    "snt": (snt.run, "phuong2019-snt", "opaque AES-GCM blobs of the weights after every site visit"),
    "fnt": (fnt.run, "phuong2019-fnt", "nothing but the visiting schedule (weights go site to site)"),
    "dssgd": (dssgd.run, "shokri2015-dssgd", "a fraction theta_u of each site's update (index, value) at every visit"),
}

# protocols whose sites train one after another (a model visits them in turn); the others train all sites at once
SEQUENTIAL = frozenset({"swt", "cwt", "snt", "fnt", "dssgd"})

# protocols whose site half runs as a Flower client mod: name -> factory(site_index) -> mod
SITE_MODS = {"dssgd": dssgd.site_mod}


def get_protocol(name: str) -> tuple[Callable[[ProtocolContext], ProtocolOutput], str, str]:
    if name not in PROTOCOLS:
        raise unknown_name("protocol", name, list(PROTOCOLS))
    return PROTOCOLS[name]
