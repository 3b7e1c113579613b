"""he-stream (CMT over ChaCha20): the decrypted sum is the quantised sum, overflow is impossible by the parameters,
the coordinator's words are not the plaintext, and every scheme states its security level."""

import numpy as np
import pytest

from privmed.errors import PrivmedError
from privmed.privacy.he import dequantise, load_keyring, make_aggregator, make_keyring, quantise, write_keyring
from privmed.privacy.he_ckks import security_bits as ckks_security
from privmed.privacy.he_paillier import security_bits as paillier_security
from privmed.privacy.registry import make_mechanism


def encrypted_sum(keyring, vectors):
    agg = make_aggregator("stream", keyring.public())
    cts = [keyring.encrypt(v) for v in vectors]
    assert all(agg.check(c, n_values=len(vectors[0])) is None for c in cts)
    return keyring.decrypt(agg.add(cts), n_values=len(vectors[0]), count=len(vectors)), agg.add(cts)


@pytest.mark.parametrize(("sites", "bits"), [(20, 27), (16, 28), (3, 24)])
def test_decrypted_sum_is_the_quantised_sum_up_to_the_headroom_edge(sites, bits):
    # bits = 32 - ceil(log2 sites): the widest quantisation these sites allow; every site at +clip is the largest sum
    k = make_keyring("stream", n_sites=sites, bits=bits, clip=2.0)
    rng = np.random.default_rng(sites)
    for vectors in (
        [np.full(500, 2.0)] * sites,
        [np.full(500, -2.0)] * sites,
        [rng.uniform(-2, 2, 500) for _ in range(sites)],
    ):
        total, _ = encrypted_sum(k, vectors)
        quantised = sum(quantise(v, clip=2.0, bits=bits).astype(np.float64) for v in vectors)
        assert np.array_equal(total, dequantise(quantised, clip=2.0, bits=bits, count=sites))  # exact
        step = 4.0 / (2**bits - 1)
        assert np.abs(total - np.sum(vectors, axis=0)).max() <= sites * step / 2 + 1e-9
    assert np.allclose(encrypted_sum(k, [np.full(3, 2.0)] * sites)[0], 2.0 * sites)


def test_parameters_that_could_overflow_and_values_beyond_clip_are_refused():
    with pytest.raises(PrivmedError, match="from 4 to 27 for 20 sites"):
        make_keyring("stream", n_sites=20, bits=28)  # 20 * (2**28 - 1) >= 2**32
    k = make_keyring("stream", n_sites=2, clip=1.0)
    with pytest.raises(PrivmedError, match="overflowed"):
        k.decrypt(make_aggregator("stream", k.public()).add([k.encrypt(np.zeros(3))] * 3), n_values=3, count=3)
    for bad in (np.array([0.0, 1.5]), np.array([np.nan])):
        with pytest.raises(PrivmedError, match="exceeds he-stream's clip 1"):
            k.encrypt(bad)
    with pytest.raises(PrivmedError, match="clip must be a positive number"):
        make_keyring("stream", n_sites=2, clip=0)


def test_coordinator_words_are_not_the_plaintext_and_a_replayed_ciphertext_is_refused():
    k = make_keyring("stream", n_sites=4)
    zeros = np.zeros(4000)
    a, b = k.encrypt(zeros), k.encrypt(zeros)
    assert len(a) == 4 * 4000 + 12 and a != b  # 1x float32 plus a nonce; randomised
    words = np.frombuffer(a[12:], dtype="<u4")
    plain = quantise(zeros, clip=k.clip, bits=k.bits)
    assert np.mean(words == plain[0]) < 0.01
    assert 0.45 < np.mean(words >> 31) < 0.55 and words.max() >= 2**k.bits  # uniform words, not 24-bit plaintexts
    summed = np.frombuffer(make_aggregator("stream", k.public()).add([a, b])[24:], dtype="<u4")
    assert np.mean(summed == 2 * plain[0]) < 0.01  # the coordinator's sum is not the plaintext sum either
    with pytest.raises(PrivmedError, match="twice"):
        k.decrypt(make_aggregator("stream", k.public()).add([a, a]), n_values=4000, count=2)
    other = make_keyring("stream", n_sites=4)
    assert other.key_id != k.key_id and not np.allclose(other.decrypt(a, n_values=4000, count=1), zeros, atol=0.1)


def test_keyring_file_round_trip(tmp_path):
    path = write_keyring(tmp_path / "he.keyring", "stream", n_sites=3, bits=20)
    site_a, site_b = load_keyring(path, "stream"), load_keyring(path, "stream")
    assert site_a.key_id == site_b.key_id and site_a.bits == 20
    assert np.allclose(site_b.decrypt(site_a.encrypt(np.full(5, 0.5)), n_values=5, count=1), 0.5, atol=1e-5)


def test_every_scheme_states_its_security_level_from_its_parameters():
    assert [paillier_security(b) for b in (1024, 2048, 3072)] == [80, 112, 128]  # NIST SP 800-57
    assert [ckks_security(n) for n in (4096, 8192)] == [128, 256]  # the HE standard, 80-bit modulus
    assert make_keyring("stream", n_sites=2).security_bits == 256  # ChaCha20's 256-bit key
    mech = make_mechanism({"mechanism": "he-stream", "bits": 20})
    assert mech.report()["security_bits"] is None  # no keys yet
    with pytest.raises(PrivmedError, match="unknown he-stream parameter 'key_bits'; valid: bits, clip"):
        make_mechanism({"mechanism": "he-stream", "key_bits": 2048})
