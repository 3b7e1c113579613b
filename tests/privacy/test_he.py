"""HE building blocks: packing and quantisation invariants, and both schemes checked against NumPy sums."""

import numpy as np
import pytest
import tenseal as ts
from hypothesis import given, settings
from hypothesis import strategies as st

from privmed.errors import PrivmedError
from privmed.privacy.he import dequantise, make_aggregator, make_keyring, pack, quantise, slot_bits, unpack


@given(st.integers(1, 40), st.integers(1, 30), st.data())
@settings(max_examples=60, deadline=None)
def test_pack_unpack_round_trip(width, per, data):
    values = data.draw(st.lists(st.integers(0, 2**width - 1), min_size=0, max_size=100))
    packed = pack(np.array(values, dtype=np.uint64), width=width, per_plaintext=per)
    assert len(packed) == -(-len(values) // per)
    assert all(p < 2 ** (width * per) for p in packed)
    assert unpack(packed, width=width, per_plaintext=per, n_values=len(values)).tolist() == values


@given(st.lists(st.floats(-3, 3), min_size=1, max_size=50), st.integers(1, 8), st.integers(4, 24))
@settings(max_examples=60, deadline=None)
def test_sum_of_quantised_vectors_decodes_within_half_a_step_each(values, n, bits):
    clip = 2.0
    v = np.array(values)
    q = sum(quantise(v, clip=clip, bits=bits).astype(object) for _ in range(n))
    assert max(int(x) for x in q) < 2 ** slot_bits(bits=bits, max_summands=n)  # never spills into the next slot
    step = 2 * clip / (2**bits - 1)
    assert np.allclose(
        dequantise(np.array(q, dtype=np.float64), clip=clip, bits=bits, count=n),
        n * np.clip(v, -clip, clip),
        atol=n * step / 2 + 1e-9,
    )


def test_pack_refuses_a_value_wider_than_its_slot():
    with pytest.raises(ValueError, match="4 bits"):
        pack(np.array([16], dtype=np.uint64), width=4, per_plaintext=2)


@pytest.fixture(scope="module", params=["paillier", "ckks", "stream"])
def keyring(request):
    params = {"key_bits": 1024} if request.param == "paillier" else {}
    return make_keyring(request.param, n_sites=3, **params)


def test_coordinator_adds_ciphertexts_to_the_plaintext_sum(keyring):
    rng = np.random.default_rng(0)
    vectors = [rng.normal(0, 0.3, 5000) for _ in range(3)]
    agg = make_aggregator(keyring.scheme, keyring.public())
    cts = [keyring.encrypt(v) for v in vectors]
    assert all(agg.check(c, n_values=5000) is None for c in cts)
    total = keyring.decrypt(agg.add(cts), n_values=5000, count=3)
    assert np.allclose(total, np.sum(vectors, axis=0), atol=1e-4)


def test_aggregator_refuses_truncated_and_foreign_ciphertexts(keyring):
    agg = make_aggregator(keyring.scheme, keyring.public())
    ct = keyring.encrypt(np.zeros(3000))
    assert "expected" in agg.check(ct[:-7], n_values=3000) or "parse" in agg.check(ct[:-7], n_values=3000)
    assert agg.check(ct, n_values=1000) is not None  # another model size
    other = make_keyring(keyring.scheme, n_sites=3, **({"key_bits": 1024} if keyring.scheme == "paillier" else {}))
    assert other.key_id != agg.key_id  # replies carry the key id; a foreign one is rejected by name


def test_coordinator_material_holds_no_secret_key():
    ckks = make_keyring("ckks", n_sites=2)
    public_ctx = ts.context_from(ckks.public())
    assert not public_ctx.has_secret_key() and public_ctx.is_public()
    agg = make_aggregator("ckks", ckks.public())
    with pytest.raises(ValueError):  # TenSEAL cannot decrypt without the secret key
        ts.ckks_vector_from(agg.context, ckks.encrypt(np.ones(4))).decrypt()
    secret = ckks._ctx.serialize(save_secret_key=True)
    with pytest.raises(PrivmedError, match="secret key"):
        make_aggregator("ckks", secret)
    paillier = make_keyring("paillier", n_sites=2, key_bits=1024)
    assert set(__import__("json").loads(paillier.public())) == {"scheme", "n", "bits", "clip", "max_summands"}


def test_ckks_refuses_parameters_whose_sum_could_wrap_or_that_seal_rejects():
    with pytest.raises(PrivmedError, match="poly_modulus_degree must be one of 4096, 8192, 16384"):
        make_keyring("ckks", n_sites=4, poly_modulus_degree=2048)
    with pytest.raises(PrivmedError, match="scale_bits must be a whole number from 20 to 33 for 4 sites"):
        make_keyring("ckks", n_sites=4, scale_bits=34)  # unchecked, 4 x 3.99 at scale 2**36 decrypted to -0.04
    with pytest.raises(PrivmedError, match="from 20 to 30 for 32 sites"):
        make_keyring("ckks", n_sites=32, scale_bits=31)
    with pytest.raises(PrivmedError, match="whole number"):
        make_keyring("ckks", n_sites=4, scale_bits=30.5)
    edge = make_keyring("ckks", n_sites=4, scale_bits=33)  # the largest scale allowed: the largest sum still decrypts
    agg = make_aggregator("ckks", edge.public())
    total = edge.decrypt(agg.add([edge.encrypt(np.array([3.99, -3.99, 0.0])) for _ in range(4)]), n_values=3, count=4)
    assert np.allclose(total, [15.96, -15.96, 0.0], atol=1e-4)
    with pytest.raises(PrivmedError, match="exceeds the CKKS bound 4"):
        edge.encrypt(np.array([0.0, -4.5]))
    with pytest.raises(PrivmedError, match="wrapped"):
        edge.decrypt(agg.add([edge.encrypt(np.zeros(3))] * 5), n_values=3, count=5)


def test_paillier_expansion_is_below_1_5x_for_four_sites():
    k = make_keyring("paillier", n_sites=4)  # defaults: 2048-bit key, 20-bit quantisation
    assert len(k.encrypt(np.zeros(930))) / (4 * 930) < 1.5


def test_paillier_refuses_a_sum_of_more_updates_than_slots_allow():
    k = make_keyring("paillier", n_sites=2, key_bits=1024)
    with pytest.raises(PrivmedError, match="overflow"):
        k.decrypt(k.encrypt(np.zeros(3)), n_values=3, count=3)


def test_crt_encryption_is_standard_paillier_interoperable_with_phe():
    k = make_keyring("paillier", n_sites=2, key_bits=1024)
    ours = k._encrypt_int(12345)
    theirs = k._pk.raw_encrypt(54321)  # phe's own public-key encryption
    assert k._sk.raw_decrypt(ours) == 12345
    assert k._sk.raw_decrypt(ours * theirs % k._pk.nsquare) == 12345 + 54321
    assert k._encrypt_int(7) != k._encrypt_int(7)  # randomised
