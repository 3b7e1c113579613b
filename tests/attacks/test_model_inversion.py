"""Model inversion recovers what distinguishes a class: each inversion is closer to its own class mean."""

from privmed.attacks.model_inversion import class_means, inversion_with_null
from privmed.site import ModelSpec
from privmed.tasks import train_local


def test_inversion_resembles_its_own_class(easy_fed):
    model = ModelSpec("cnn", 1, 2, "classification").build(0)
    train = easy_fed.pooled("train")
    train_local(model, train, task="classification", epochs=10, batch_size=16, lr=1e-2, seed=0)
    sim = inversion_with_null(model, ModelSpec("cnn", 1, 2, "classification").build(0), train, 2)
    assert sim["corr_own_class_mean"] > sim["corr_other_class_mean"] + 0.2
    assert sim["gap_beyond_null"] > 0.2  # the untrained model's inversion knows nothing of the classes
    assert class_means(train, 3).shape == (3, 1, 16, 16)
