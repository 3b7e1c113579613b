"""Phantom v2 is calibrated (issue 11): its label is not in a global intensity statistic, a converged CNN
learns it from pooled data, a small site alone cannot, and scanners differ enough to matter.

All four on the default config (data and model seed 0), scored on the 1,120 held-out
test images; training is privmed.data.calibration's plain loop to a validation plateau
with the best-validation checkpoint. The figures over five data seeds are in the module
docstring of privmed.data.phantom and in benchmarks/phantom_calibration.py.
"""

import pytest

from privmed.data import calibration
from privmed.data.phantom import (
    PhantomConfig,
    make_phantom,
    make_phantom_test,
    phantom_federation,
)
from tests.data.test_phantom_v1 import digest

SEED = 0
# The bytes of the default v2 phantom (seed 0) whose calibration the docstring and README
# report: change v2, and this fails until benchmarks/phantom_calibration.py is re-run and
# the table and these digests are updated together.
CALIBRATED = (
    "d93e9002b293866acbe37fe7ae80ad3a9d08bfd6e6cfa64afd7d099d096988cc",
    "d37d045b060e4dd6ea5bdaf1ac62e4295d3be44cf792171e52198e671bbf1097",
)


def test_the_default_phantom_is_the_one_the_table_was_measured_on():
    config = PhantomConfig(seed=SEED)
    assert (digest(make_phantom(config)), digest(make_phantom_test(config))) == CALIBRATED


@pytest.fixture(scope="module")
def fed():
    return phantom_federation(PhantomConfig(seed=SEED), split="natural", seed=SEED)


@pytest.fixture(scope="module")
def central(fed):
    return calibration.centralised(fed, seed=SEED)


def test_simple_baselines_stay_at_or_below_070_auroc(fed):
    """Logistic regression on a 32-bin histogram + percentiles, and on raw pixels, does not find the label."""
    b = calibration.baselines(fed)
    assert b["histogram_logreg"] <= 0.70, b
    assert b["pixels_logreg"] <= 0.70, b


def test_default_cnn_trained_centrally_reaches_090_auroc(central):
    """The default network, trained on the pooled sites to a validation plateau, learns the task."""
    assert central.auroc >= 0.90, central


@pytest.mark.parametrize("site", [3, 2])  # the two smallest sites of the default config (15 and 30 patients)
def test_each_small_site_alone_is_8_points_of_balanced_accuracy_below_centralised(fed, central, site):
    """What collaboration is worth: a small hospital alone, trained just as long, is clearly worse."""
    alone = calibration.site_alone(fed, site, seed=SEED)
    assert alone.balanced_accuracy <= central.balanced_accuracy - 0.08, (alone, central)


def test_a_model_trained_on_one_scanner_loses_5_points_on_the_others(fed):
    """Site effects: a model trained on one scanner (site 0, site 1: the mean) is ≥ 5 points of balanced accuracy
    worse on the other scanners' patients than on its own scanner's."""
    cross = calibration.cross_scanner(fed, seed=SEED)
    assert cross["drop"] >= 0.05, cross


def test_the_3d_phantom_keeps_its_label_out_of_intensity_statistics():
    """phantom:v2?volume=1 at its default 32³ (seed 0): a histogram + percentiles regression and the maximum alone
    stay at or below 0.70 AUROC on the held-out volumes; raw voxels too, checked at 16³ (cheaper; the 32³ figure is
    in the README's 3-D table)."""
    volume = {"volume": True, "images_per_patient": 1}
    fed = phantom_federation(PhantomConfig(seed=SEED, **volume), split="natural", seed=SEED)
    assert fed.image_shape == (1, 32, 32, 32)
    b = calibration.baselines(fed, pixels=False)
    assert b["histogram_logreg"] <= 0.70 and b["max_alone"] <= 0.70 and b["p90_alone"] <= 0.70, b
    small = phantom_federation(PhantomConfig(seed=SEED, image_size=16, **volume), split="natural", seed=SEED)
    assert calibration.baselines(small)["pixels_logreg"] <= 0.70
