"""The threat matrix: every protocol declares every party's view; the README shows exactly what the code declares."""

import pathlib

import pytest

from privmed.protocols.registry import PROTOCOLS
from privmed.threat import CIPHERTEXT, INVERTIBLE, PARTIES, markdown_table

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_matrix_matches_the_protocols_word_for_word():
    text = README.read_text()
    start = text.index("<!-- threat matrix:")
    end = text.index("<!-- end of threat matrix -->")
    shown = [line for line in text[start:end].splitlines()[1:] if line.strip()]
    assert shown == markdown_table(PROTOCOLS)


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_every_party_has_a_view_and_an_active_coordinator_line(name):
    spec = PROTOCOLS[name]
    assert set(spec.all_views()) == set(PARTIES)
    assert spec.coordinator_sees == spec.views["coordinator"].sees and spec.active_coordinator


def test_encrypted_protocols_hide_updates_from_the_coordinator_but_not_from_the_sites_that_decrypt():
    for name in ("he-fedavg", "snt"):
        assert PROTOCOLS[name].views["coordinator"].kind == CIPHERTEXT
        assert PROTOCOLS[name].views["another site"].kind in INVERTIBLE
    assert PROTOCOLS["secagg-fedavg"].views["coordinator"].kind == "aggregate"
    assert PROTOCOLS["fnt"].views["coordinator"].kind == "nothing"
