"""Key files and sealed blobs for encrypted weight transmission."""

import dataclasses
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from privmed.errors import PrivmedError
from privmed.privacy.aes_keys import (
    ANY_SITE,
    Header,
    PairwiseKeys,
    check_header,
    load_key,
    open_sealed,
    seal,
    write_key,
)


def test_key_file_round_trip_is_owner_only(tmp_path):
    path = write_key(tmp_path / "snt.key")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert len(load_key(path)) == 32


@pytest.mark.parametrize("mode", [0o644, 0o620, 0o604, 0o601])  # readable, or only writable, by group or others
def test_key_file_accessible_by_group_or_others_is_refused_with_the_fix(tmp_path, mode):
    path = write_key(tmp_path / "snt.key")
    os.chmod(path, mode)
    with pytest.raises(PrivmedError, match=f"accessible by group or others \\(mode {mode:o}\\); run: chmod 600"):
        load_key(path)


@pytest.mark.parametrize(
    "text,found",
    [
        ("not hex at all", "14 characters"),
        ("ab" * 16, "32 characters"),
        ("", "0 characters"),
        ("z" * 64, "64 characters"),
        ("ab " * 32, "95 characters"),
        ("ab" * 4000, None),
    ],
)
def test_key_file_of_the_wrong_format_is_refused(tmp_path, text, found):
    path = tmp_path / "bad.key"
    path.write_text(text)
    os.chmod(path, 0o600)
    why = f"found {found}, not 64 hex digits" if found else "holds more than 4096 bytes: not a key file"
    with pytest.raises(PrivmedError, match=why):
        load_key(path)


def test_missing_key_file_is_refused(tmp_path):
    with pytest.raises(PrivmedError, match="nope.key not found; create one with"):
        load_key(tmp_path / "nope.key")


def test_a_directory_or_a_fifo_is_not_a_key_file(tmp_path):
    (tmp_path / "dir.key").mkdir(mode=0o700)
    with pytest.raises(PrivmedError, match="is not a regular file"):
        load_key(tmp_path / "dir.key")
    os.mkfifo(tmp_path / "fifo.key", 0o600)
    with pytest.raises(PrivmedError, match="is not a regular file"):  # refused at once, not hung waiting for a writer
        load_key(tmp_path / "fifo.key")


def test_a_symbolic_link_to_a_key_file_is_not_followed(tmp_path):
    target = write_key(tmp_path / "snt.key")
    (tmp_path / "link.key").symlink_to(target)
    with pytest.raises(PrivmedError, match="is a symbolic link"):
        load_key(tmp_path / "link.key")


def test_a_key_file_owned_by_another_user_is_refused(tmp_path, monkeypatch):
    path = write_key(tmp_path / "snt.key")
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(path).st_uid + 1)
    with pytest.raises(PrivmedError, match="is owned by uid"):
        load_key(path)


HEADER = Header(run="run-a", round=2, sender="site-1", recipient="site-2")


def test_tampered_or_foreign_blob_fails_authentication_naming_both_sites():
    key = AESGCM.generate_key(bit_length=256)
    blob = seal(b"weights", key=key, header=HEADER)
    assert open_sealed(blob, key=key, receiver="site-2") == (b"weights", HEADER)
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(PrivmedError, match="site-2: weights from 'site-1' failed authentication"):
        open_sealed(tampered, key=key, receiver="site-2")
    with pytest.raises(PrivmedError, match="failed authentication"):
        open_sealed(blob, key=AESGCM.generate_key(bit_length=256), receiver="site-2")
    for field, new in ((b"site-1", b"site-3"), (b"site-2", b"site-4"), (b"run-a", b"run-b"), (b", 2,", b", 3,")):
        relabelled = blob.replace(field, new, 1)  # every header field is authenticated
        assert relabelled != blob
        with pytest.raises(PrivmedError, match="failed authentication"):
            open_sealed(relabelled, key=key, receiver="site-2")


@pytest.mark.parametrize(
    ("header", "round", "last_round", "why"),
    [
        (dataclasses.replace(HEADER, run="run-b"), 2, 0, "belong to another run"),
        (HEADER, 3, 3, "sealed in round 2, but this is round 3 and site-2 already accepted round 3: replayed"),
        (dataclasses.replace(HEADER, round=4), 3, 0, "sealed in round 4, but this is round 3"),
        (dataclasses.replace(HEADER, recipient="site-5"), 2, 0, "sealed for 'site-5': re-addressed blob refused"),
    ],
)
def test_a_receiver_refuses_other_runs_replays_reorderings_and_re_addressed_blobs(header, round, last_round, why):
    with pytest.raises(PrivmedError, match=why):
        check_header(header, receiver="site-2", run="run-a", round=round, last_round=last_round)
    check_header(HEADER, receiver="site-2", run="run-a", round=2, last_round=2)  # the same round again: a re-open
    check_header(dataclasses.replace(HEADER, recipient=ANY_SITE), receiver="site-2", run="run-a", round=3, last_round=1)


def test_pairwise_keys_agree_at_both_ends_and_differ_between_pairs():
    keys = PairwiseKeys(["a", "b", "c"])
    assert keys.key("a", "b") == keys.key("b", "a")
    assert keys.key("a", "b") != keys.key("a", "c")
