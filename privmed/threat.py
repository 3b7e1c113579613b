"""The threat model, as data: what each party sees under each protocol, and which attack that view allows.

Every protocol declares, in its spec, the view of each party that could be
curious: the **coordinator**, **another site** taking part in the same run,
an **eavesdropper** on the wire (no TLS: in a Flower deployment with TLS it
sees only ciphertext), and a **model user** who gets the released model.
The audit (:mod:`privmed.audit`) attacks each party's *actual* view:
gradient inversion needs an update (one site's, a fraction of one site's, or
the aggregate of all sites'); ciphertexts, raw data already handed over, or
nothing leave it "not applicable", shown why. Split learning's cut-layer
activations are a view of their own (``ACTIVATIONS``), attacked by the
audit's activation inversion. Membership inference, model
inversion and adversarial examples attack the released model, which every
model user holds.

Each protocol also states what survives an **active (malicious)
coordinator** beside the honest-but-curious one the views assume. A privacy
mechanism adds its own line (``Mechanism.threat``): DP-SGD's noise is added
at the site, before anything leaves it; DP-FedAvg's central noise is added
by the coordinator, which therefore sees the aggregate before the noise.
"""

from __future__ import annotations

from dataclasses import dataclass

PARTIES = ("coordinator", "another site", "eavesdropper", "model user")

# What a view holds; the audit's gradient inversion needs one of the first three.
UPDATE = "update"  # one site's update (or the model it returns)
PARTIAL = "partial update"  # a selected fraction of one site's update (DSSGD)
AGGREGATE = "aggregate"  # the sum or mean of every site's update (the global model's step)
RAW = "raw data"
CIPHERTEXT = "ciphertext"
ACTIVATIONS = "activations"  # cut-layer activations of the site's images (split learning), not a weight update
NOTHING = "nothing"
MODEL = "model"
INVERTIBLE = (UPDATE, PARTIAL, AGGREGATE)


@dataclass(frozen=True)
class View:
    """What one party receives: its kind (what an attack can use) and the words the report and README show."""

    kind: str
    sees: str

    def __post_init__(self) -> None:
        kinds = (*INVERTIBLE, RAW, CIPHERTEXT, ACTIVATIONS, NOTHING, MODEL)
        if self.kind not in kinds:
            raise ValueError(f"view kind must be one of {kinds}, got {self.kind!r}")


RELEASED_MODEL = View(MODEL, "the released model (white box)")


def not_invertible(party: str, view: View) -> str:
    """Why gradient inversion does not apply to a party's view."""
    why = {
        RAW: "already receives the raw images; there is no update to invert (leakage is total)",
        CIPHERTEXT: "sees only ciphertext it cannot decrypt",
        ACTIVATIONS: "receives cut-layer activations, not a weight update (the activation-inversion attack uses them)",
        NOTHING: "receives no update",
        MODEL: "holds only the released model, not an update",
    }[view.kind]
    return f"the {party} {why} ({view.sees})"


def matrix(protocol, mechanism) -> dict[str, dict[str, str]]:
    """party -> {sees, kind} for a protocol (its spec) under a mechanism, plus the active-coordinator line."""
    out = {party: {"sees": v.sees, "kind": v.kind} for party, v in protocol.all_views().items()}
    out["active coordinator"] = {"survives": protocol.active_coordinator}
    if mechanism.threat:
        out["mechanism"] = {"note": mechanism.threat}
    return out


def markdown_table(protocols) -> list[str]:
    """The matrix for every protocol as a Markdown table (README, report); ``protocols``: name -> spec."""
    head = ["protocol", *(p for p in PARTIES if p != "model user"), "an active coordinator"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, spec in protocols.items():
        cells = [f"`{name}`", *(spec.views[p].sees for p in PARTIES if p != "model user"), spec.active_coordinator]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
