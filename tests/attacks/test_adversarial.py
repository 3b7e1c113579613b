"""FGSM/PGD stay inside the threat model's L-inf ball and break a model that is accurate on clean images."""

import torch

from privmed.attacks.adversarial import fgsm, pgd, robust_accuracy
from privmed.site import ModelSpec
from privmed.tasks import train_local


def _trained(easy_fed):
    model = ModelSpec("cnn", 1, 2, "classification").build(0)
    train_local(model, easy_fed.pooled("train"), task="classification", epochs=10, batch_size=16, lr=1e-2, seed=0)
    return model.eval()


def test_perturbations_respect_eps_and_image_range(easy_fed):
    model = _trained(easy_fed)
    test = easy_fed.pooled("test")
    x, y = torch.from_numpy(test.images), torch.from_numpy(test.labels)
    inside = (x > 0.05) & (x < 0.95)  # pixels the [0, 1] clamp cannot touch
    for adv in (fgsm(model, x, y, eps=0.05), pgd(model, x, y, eps=0.05, steps=5)):
        assert float((adv - x).abs().max()) <= 0.05 + 1e-6
        assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    # FGSM spends the whole budget: every unclamped pixel with a non-zero input gradient moves by exactly eps
    step = (fgsm(model, x, y, eps=0.05) - x).abs()[inside]
    assert float((step > 0.05 - 1e-6).float().mean()) > 0.9


def test_pgd_breaks_an_accurate_model_and_is_at_least_as_strong_as_fgsm(easy_fed):
    model = _trained(easy_fed)
    test = easy_fed.pooled("test")
    f = robust_accuracy(model, test, eps=(0.0, 0.3), attack="fgsm")
    p = robust_accuracy(model, test, eps=(0.0, 0.3), attack="pgd", steps=10)
    assert p["eps=0"] == f["eps=0"] > 0.9  # eps 0: clean accuracy
    assert p["eps=0.3"] < 0.5  # from > 0.9 clean
    assert p["eps=0.3"] <= f["eps=0.3"] + 1e-9
