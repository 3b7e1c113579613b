"""A protocol output that carries its own measurements into result.json.

Encrypting protocols know figures the harness cannot see from the outside:
ciphertext size against the plaintext update (the expansion factor) and
seconds spent encrypting, adding and decrypting. ``measured`` maps a result
section ("communication", "runtime") to the keys merged into it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from privmed.protocols.base import ProtocolOutput


@dataclass
class MeasuredOutput(ProtocolOutput):
    measured: dict[str, dict] = field(default_factory=dict)
