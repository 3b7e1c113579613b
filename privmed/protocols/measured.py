"""A protocol output that carries its own measurements into result.json.

Encrypting protocols know figures the harness cannot see from the outside:
ciphertext size against the plaintext update (the expansion factor) and
seconds spent encrypting, adding and decrypting. ``measured`` maps a result
section ("communication", "runtime") to the keys merged into it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from privmed.errors import PrivmedError
from privmed.protocols.base import ProtocolContext, ProtocolOutput


@dataclass
class MeasuredOutput(ProtocolOutput):
    measured: dict[str, dict] = field(default_factory=dict)


def refuse_resume(ctx: ProtocolContext) -> None:
    """Encrypted protocols do not resume: keys (HE, AES, SecAgg+ rounds) lived in the interrupted process."""
    if ctx.start_round > 1:
        raise PrivmedError("this encrypted protocol cannot resume: the sites' keys (and the encrypted model) belonged to the "
                           "interrupted process; start the run again without --resume")
