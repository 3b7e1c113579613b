"""Segmentation metrics as the field reports them: lesion-present Dice, the stated empty-case convention, HD95."""

import numpy as np
import pytest

from privmed.tasks import segmentation_metrics


def _proba(pred: np.ndarray) -> np.ndarray:
    """Two-class probabilities whose argmax is ``pred`` [N, 1, H, W]."""
    p = pred[:, 0].astype(np.float32)
    return np.stack([1 - p, p], 1)


def _cases() -> np.ndarray:
    masks = np.zeros((4, 1, 16, 16), dtype=np.uint8)
    masks[0, 0, 4:8, 4:8] = 1
    masks[1, 0, 8:12, 2:10] = 1  # cases 2 and 3 have no lesion
    return masks


def test_all_background_segmenter_scores_zero_on_lesion_cases_and_the_empty_share_overall():
    masks = _cases()
    m = segmentation_metrics(masks, _proba(np.zeros_like(masks)))
    assert m["dice"] == 0.0  # the headline cannot be gamed by predicting nothing
    assert m["dice_overall"] == pytest.approx(0.5) == m["empty_fraction"]  # empty-empty = 1, stated
    assert m["hd95"] == pytest.approx(np.hypot(16, 16)) and m["hd95_empty_prediction"] == 1.0
    assert m["empty_false_positive_rate"] == 0.0


def test_perfect_and_shifted_predictions():
    masks = _cases()
    perfect = segmentation_metrics(masks, _proba(masks))
    assert perfect["dice"] == 1.0 and perfect["hd95"] == 0.0 and perfect["dice_overall"] == 1.0
    shifted = np.roll(masks, 2, axis=-1)  # every lesion moved 2 px right: boundary distances are 0 or 2
    s = segmentation_metrics(masks, _proba(shifted))
    assert s["hd95"] == pytest.approx(2.0)
    assert s["dice"] == pytest.approx(np.mean([2 * 8 / 32, 2 * 24 / 64]))  # 4x4: 8 of 16 overlap; 4x8: 24 of 32
    noisy = shifted.copy()
    noisy[2, 0, 0, 0] = 1  # a false lesion in an empty case
    assert segmentation_metrics(masks, _proba(noisy))["empty_false_positive_rate"] == 0.5


def test_volumes_are_scored_in_3d():
    """A 4³ cube moved 2 slices along the volume's first axis: HD95 2 voxels in 3-D; an empty prediction scores the
    volume's space diagonal; Dice counts voxels."""
    masks = np.zeros((2, 1, 12, 12, 12), dtype=np.uint8)
    masks[0, 0, 4:8, 4:8, 4:8] = 1  # case 1 has no lesion
    shifted = np.roll(masks, 2, axis=2)
    m = segmentation_metrics(masks, _proba(shifted))
    assert m["hd95"] == pytest.approx(2.0) and m["dice"] == pytest.approx(2 * 32 / 128)  # 32 of 64 voxels overlap
    assert m["dice_overall"] == pytest.approx((0.5 + 1.0) / 2)  # the empty-empty case scores 1, as stated
    empty = segmentation_metrics(masks, _proba(np.zeros_like(masks)))
    assert empty["hd95"] == pytest.approx(np.sqrt(3 * 12**2)) and empty["dice"] == 0.0


def test_the_segmentation_loss_scores_a_missed_lesion_as_a_miss_even_beside_empty_images():
    """Dice on the lesion channel over the batch: an all-background prediction of a batch with one lesion image and
    one empty image gets Dice loss ~1 (with the background channel in the Dice term: 0.52, what let the U-Net
    collapse to empty masks), and the right prediction ~0 (with Dice per image: 0.50, the empty image's soft
    lesion probabilities scoring as a miss)."""
    import torch

    from privmed.tasks import loss_fn

    y = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    y[0, 0, 2:5, 2:5] = 1  # image 0 has a lesion, image 1 none
    background = torch.zeros(2, 2, 8, 8)
    background[:, 0] = 10.0  # every pixel predicted background
    criterion = loss_fn("segmentation")
    assert float(criterion.dice(background, y)) > 0.99
    hit = background.clone()
    hit[0, 1, 2:5, 2:5] = 20.0  # the lesion found, the empty image left empty
    assert float(criterion.dice(hit, y)) < 0.01
