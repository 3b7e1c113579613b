"""MORE (privmed.privacy.more, more_net): the scheme's algebra and training on ciphertexts against plaintext."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from privmed.errors import PrivmedError
from privmed.models import PolyCNN
from privmed.privacy import more
from privmed.privacy import more_net as mn


def rng(seed):
    return np.random.default_rng(seed)


@pytest.fixture
def key():
    return more.keygen(rng(0))


def test_encryption_round_trips_hides_the_value_and_draws_a_fresh_r_each_time(key):
    m = torch.linspace(-2, 2, 50)
    c = more.encrypt(key, m, rng(1), dtype=torch.float64)
    assert c.shape == (50, 2, 2)
    assert torch.allclose(more.decrypt(key, c), m.double(), atol=1e-12)
    assert not torch.allclose(c[..., 0, 0], m.double())  # the ciphertext's entries are not the plaintext
    again = more.encrypt(key, m, rng(2), dtype=torch.float64)
    assert (c - again).abs().amax(dim=(1, 2)).min() > 1e-6  # same value, other r: another ciphertext


def test_keys_are_well_conditioned_and_secret_seeded():
    k1, k2 = more.keygen(), more.keygen()  # the OS's entropy: two keys differ
    assert not torch.equal(k1.s, k2.s)
    assert np.linalg.cond(k1.s.numpy()) <= more.MAX_COND
    assert torch.allclose(k1.s @ k1.s_inv, torch.eye(2, dtype=torch.float64))


def test_sums_and_products_of_ciphertexts_decrypt_to_sums_and_products(key):
    a, b = torch.randn(20, generator=torch.Generator().manual_seed(0)), torch.rand(20)
    ca, cb = (more.encrypt(key, v, rng(i), dtype=torch.float64) for i, v in enumerate((a, b)))
    assert torch.allclose(more.decrypt(key, ca + cb), (a + b).double(), atol=1e-10)
    assert torch.allclose(more.decrypt(key, ca @ cb), (a * b).double(), atol=1e-10)
    assert torch.allclose(more.decrypt(key, 3.0 * ca + more.encode(b.double())), (3 * a + b).double(), atol=1e-10)


def test_ring_convolution_dense_layer_and_square_decrypt_to_the_plaintext_ops(key):
    g, f64 = torch.Generator().manual_seed(1), torch.float64
    x, w = torch.randn(3, 2, 6, 6, generator=g, dtype=f64), torch.randn(4, 2, 3, 3, generator=g, dtype=f64)
    b = torch.randn(4, generator=g, dtype=f64)
    enc = lambda v, s: more.encrypt(key, v, rng(s), dtype=torch.float64)  # noqa: E731
    y = more.from_blocks(more.conv2d(more.to_blocks(enc(x, 1)), enc(w, 2), enc(b, 3), padding=1))
    assert torch.allclose(more.decrypt(key, y), F.conv2d(x, w, b, padding=1), atol=1e-9)
    sq = more.from_blocks(more.square(more.to_blocks(enc(x, 4))))
    assert torch.allclose(more.decrypt(key, sq), x * x, atol=1e-9)
    xl, wl = torch.randn(5, 7, generator=g, dtype=f64), torch.randn(3, 7, generator=g, dtype=f64)
    yl = more.from_blocks(more.linear(more.to_blocks(enc(xl, 5)), enc(wl, 6), None))
    assert torch.allclose(more.decrypt(key, yl), xl @ wl.T, atol=1e-9)


def tiny_data(n=24, size=8):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(n, 1, size, size, generator=g)
    labels = (x[:, 0, 2:6, 2:6].mean((1, 2)) > 0.5).long()
    return x, mn.onehot(labels, 2)


def test_the_ring_loop_with_1x1_matrices_is_torch_sgd_on_the_same_network():
    x, y = tiny_data()
    torch.manual_seed(0)
    model = PolyCNN(1, 2, width=4)
    params = mn.encode_params(model.state_dict(), k=1)
    velocity = {k: torch.zeros_like(v) for k, v in params.items()}
    opt = mn.plain_optimizer(model, lr=0.05, momentum=0.9)
    for ep in range(2):
        mn.ring_sgd_epoch(
            mn.ring_layers(model), params, velocity, more.encode(x, 1), more.encode(y, 1),
            lr=0.05, momentum=0.9, batch_size=8, rng=rng(ep),
        )  # fmt: skip
        mn.plain_sgd_epoch(model, opt, x, y, batch_size=8, rng=rng(ep))
    for name, w in model.state_dict().items():
        assert torch.allclose(params[name].detach()[..., 0, 0], w, atol=1e-5), name
        assert not torch.allclose(w, PolyCNN(1, 2, width=4).state_dict()[name])  # it did train


def test_training_on_ciphertexts_gives_the_plaintext_model_once_decrypted_and_encrypted_predictions_agree(key):
    x, y = tiny_data()
    torch.manual_seed(0)
    model = PolyCNN(1, 2, width=4)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    params = mn.encode_params(model.state_dict())
    velocity = {k: torch.zeros_like(v) for k, v in params.items()}
    opt = mn.plain_optimizer(model, lr=0.05, momentum=0.9)
    cx, cy = more.encrypt(key, x, rng(3)), more.encrypt(key, y, rng(4))
    for ep in range(2):
        mn.ring_sgd_epoch(
            mn.ring_layers(model), params, velocity, cx, cy, lr=0.05, momentum=0.9, batch_size=8, rng=rng(ep)
        )
        mn.plain_sgd_epoch(model, opt, x, y, batch_size=8, rng=rng(ep))
    moved = 0.0
    for name, w in model.state_dict().items():
        assert torch.allclose(more.decrypt(key, params[name].detach()).float(), w, atol=1e-4), name
        moved = max(moved, float((w - start[name]).abs().max()))
    assert moved > 1e-3  # the comparison is between trained models, not two copies of the initial one
    out = more.from_blocks(mn.forward(mn.ring_layers(model), params, more.to_blocks(cx)))  # encrypted inference
    with torch.no_grad():
        assert torch.allclose(more.decrypt(key, out.detach()).float(), model(x), atol=1e-4)


def test_layers_ciphertexts_cannot_evaluate_are_refused_by_name():
    from privmed.models import SmallCNN

    with pytest.raises(PrivmedError, match=r"GroupNorm.*poly-cnn"):
        mn.ring_layers(SmallCNN(1, 2))
