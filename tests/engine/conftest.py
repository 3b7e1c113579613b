"""Shared by the deployment tests: the secrets an encrypting protocol's sites share, and opening a sealed model."""

from __future__ import annotations

from privmed.engine.session import build_federation, plan_of
from privmed.privacy.aes_keys import write_key
from privmed.privacy.he import write_keyring
from privmed.privacy.registry import make_mechanism

PRIVACY = {"secagg-fedavg": {"mechanism": "secagg"}}


def privacy_of(protocol: str, folder) -> dict:
    """The protocol's mechanism; an encrypting one with the secret file the sites share (never the coordinator)."""
    if protocol == "he-fedavg":
        path = write_keyring(folder / "he.keyring", "paillier", n_sites=3, key_bits=1024)
        return {"mechanism": "he-paillier", "key_bits": 1024, "keyring_file": str(path)}
    if protocol == "snt":
        return {"mechanism": "aes-gcm", "key_file": str(write_key(folder / "snt.key"))}
    return PRIVACY.get(protocol, {})


def opened(config, predictor):
    """A sealed model as a site opens it with the shared secret (the deployed coordinator holds it sealed)."""
    mechanism = make_mechanism(config.privacy)
    mechanism.check(plan_of(config, build_federation(config.data, config.seed)))
    return mechanism.reveal(predictor)
