"""The attack metrics against closed forms and an independent NumPy/SciPy computation."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from privmed.attacks.metrics import correlation, mia_metrics, per_patient, psnr, ssim


def test_psnr_closed_form():
    x = torch.zeros(2, 1, 8, 8)
    assert abs(psnr(x + 0.1, x) - 20.0) < 1e-4  # MSE 0.01 -> 20 dB


def test_ssim_identity_and_constant_images_match_wang2004_formula():
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert abs(ssim(x, x) - 1.0) < 1e-9
    a, b, c1 = 0.3, 0.5, 0.01**2  # zero variance: SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    got = ssim(torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b))
    assert abs(got - (2 * a * b + c1) / (a * a + b * b + c1)) < 1e-6  # inputs are float32


def test_ssim_matches_scipy_recomputation():
    from scipy.ndimage import correlate

    rng = np.random.default_rng(1)
    x, y = rng.random((20, 20)), rng.random((20, 20))
    y = 0.7 * x + 0.3 * y
    r = np.arange(11) - 5
    g = np.exp(-(r**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()

    def f(img):
        return correlate(img, w, mode="constant")[5:-5, 5:-5]  # valid region

    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    ref = (((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean()
    got = ssim(torch.from_numpy(x)[None, None].float(), torch.from_numpy(y)[None, None].float())
    assert abs(got - ref) < 1e-5


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=4, max_size=40), st.integers(0, 2**16))
def test_mia_auc_is_the_mann_whitney_statistic(scores, seed):
    s = np.array(scores)
    m = np.random.default_rng(seed).random(len(s)) < 0.5
    m[0], m[1] = True, False
    pos, neg = s[m], s[~m]
    ref = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    out = mia_metrics(s, m)
    assert abs(out["auc"] - ref) < 1e-9
    assert np.isnan(out["tpr_at_1pct_fpr"]) == (len(neg) < 100)  # fewer than 100 non-members: not measurable


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**16), st.integers(100, 400))
def test_tpr_at_fpr_is_the_brute_force_best_threshold(seed, n_neg):
    rng = np.random.default_rng(seed)
    s = np.r_[rng.normal(1, 1, 60), rng.normal(0, 1, n_neg)]
    m = np.r_[np.ones(60, bool), np.zeros(n_neg, bool)]
    best = max(
        ((s[m] >= t).mean() for t in np.r_[s, np.inf] if (s[~m] >= t).mean() <= 0.01),
        default=0.0,
    )
    assert mia_metrics(s, m)["tpr_at_1pct_fpr"] == best


def test_mia_tpr_at_low_fpr():
    scores = np.r_[np.linspace(10, 11, 50), np.linspace(0, 1, 1000)]
    members = np.r_[np.ones(50, bool), np.zeros(1000, bool)]
    assert mia_metrics(scores, members) == {
        "auc": 1.0,
        "tpr_at_1pct_fpr": 1.0,
        "tpr_at_0.1pct_fpr": 1.0,
        "non_members": 1000,
    }
    assert np.isnan(mia_metrics(scores[:-1], members[:-1])["tpr_at_0.1pct_fpr"])  # 999 non-members: unmeasurable
    assert mia_metrics(-scores, members)["tpr_at_1pct_fpr"] == 0.0


def test_per_patient_means_scores_and_any_member():
    s, m = per_patient(np.array([1.0, 3.0, 5.0]), np.array([True, False, False]), np.array(["a", "a", "b"]))
    assert s.tolist() == [2.0, 5.0] and m.tolist() == [True, False]


def test_correlation():
    a = np.arange(10.0)
    assert abs(correlation(a, 2 * a + 1) - 1) < 1e-12 and abs(correlation(a, -a) + 1) < 1e-12


def test_ssim_of_volumes_uses_the_window_in_3d():
    """Volumes [N, C, D, H, W]: the same Gaussian window over three axes, recomputed with scipy."""
    from scipy.ndimage import correlate

    rng = np.random.default_rng(2)
    x = rng.random((14, 14, 14))
    y = 0.6 * x + 0.4 * rng.random((14, 14, 14))
    r = np.arange(11) - 5
    g = np.exp(-(r**2) / (2 * 1.5**2))
    w = np.einsum("i,j,k->ijk", g, g, g)
    w /= w.sum()

    def f(img):
        return correlate(img, w, mode="constant")[5:-5, 5:-5, 5:-5]

    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    ref = (((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean()
    got = ssim(torch.from_numpy(x)[None, None].float(), torch.from_numpy(y)[None, None].float())
    assert (
        abs(got - ref) < 1e-5 and abs(ssim(torch.from_numpy(x)[None, None], torch.from_numpy(x)[None, None]) - 1) < 1e-9
    )
