"""Key files and sealed blobs for encrypted weight transmission."""

import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from privmed.errors import PrivmedError
from privmed.privacy.aes_keys import PairwiseKeys, load_key, open_sealed, seal, write_key


def test_key_file_round_trip_is_owner_only(tmp_path):
    path = write_key(tmp_path / "snt.key")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert len(load_key(path)) == 32


def test_group_or_world_readable_key_file_is_refused_with_the_fix(tmp_path):
    path = write_key(tmp_path / "snt.key")
    os.chmod(path, 0o644)
    with pytest.raises(PrivmedError, match="chmod 600"):
        load_key(path)


@pytest.mark.parametrize("text", ["not hex at all", "ab" * 16, ""])
def test_key_file_of_the_wrong_format_is_refused(tmp_path, text):
    path = tmp_path / "bad.key"
    path.write_text(text)
    os.chmod(path, 0o600)
    with pytest.raises(PrivmedError, match="64 hex characters"):
        load_key(path)


def test_missing_key_file_is_refused(tmp_path):
    with pytest.raises(PrivmedError, match="does not exist"):
        load_key(tmp_path / "nope.key")


def test_tampered_or_foreign_blob_fails_authentication_naming_both_sites():
    key = AESGCM.generate_key(bit_length=256)
    blob = seal(b"weights", key=key, sender="site-1")
    assert open_sealed(blob, key=key, receiver="site-2") == b"weights"
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(PrivmedError, match="site-2: weights from 'site-1' failed authentication"):
        open_sealed(tampered, key=key, receiver="site-2")
    with pytest.raises(PrivmedError, match="failed authentication"):
        open_sealed(blob, key=AESGCM.generate_key(bit_length=256), receiver="site-2")
    relabelled = blob.replace(b"site-1", b"site-3", 1)  # the sender's name is authenticated too
    with pytest.raises(PrivmedError, match="failed authentication"):
        open_sealed(relabelled, key=key, receiver="site-2")


def test_pairwise_keys_agree_at_both_ends_and_differ_between_pairs():
    keys = PairwiseKeys(["a", "b", "c"])
    assert keys.key("a", "b") == keys.key("b", "a")
    assert keys.key("a", "b") != keys.key("a", "c")
