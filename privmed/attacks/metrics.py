"""Attack metrics as pure functions: image similarity and membership-inference scores.

- PSNR: peak signal-to-noise ratio for images in [0, 1].
- SSIM: Wang, Bovik, Sheikh, Simoncelli 2004, "Image quality assessment: from
  error visibility to structural similarity" (IEEE TIP), 11x11 Gaussian window
  with sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1 — the paper's constants and
  scikit-image's ``gaussian_weights=True`` setting. Written here in torch
  because neither scikit-image nor torchmetrics is a dependency. Volumes
  [N, C, D, H, W] use the same window in 3-D (the separable Gaussian's outer
  product over three axes, as scikit-image and MONAI's 3-D SSIM do).
- Membership inference: ``mia_metrics`` returns ``{auc, tpr_at_1pct_fpr,
  tpr_at_0.1pct_fpr}`` like Privacy Meter's one benchmark row; TPR at a fixed
  FPR is read from the ROC curve (Carlini et al. 2022 report it this way). A
  TPR at an FPR below ``1 / non_members`` would be a TPR at zero false
  positives, not at that FPR: it is NaN there, and ``non_members`` is reported.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean PSNR (dB) over a batch [N, C, H, W] of images (or [N, C, D, H, W] volumes) in [0, 1]."""
    mse = ((x.clamp(0, 1) - ref) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1.0 / mse)).mean())


def _gaussian_window(size: int = 11, sigma: float = 1.5, dims: int = 2) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    w = g[:, None] * g[None, :]
    return (w[..., None] * g if dims == 3 else w).float()


def ssim(x: torch.Tensor, ref: torch.Tensor, *, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM over a batch [N, C, H, W] (or volumes [N, C, D, H, W]) in [0, 1] (Wang et al. 2004, valid-region
    mean)."""
    c1, c2 = 0.01**2, 0.03**2
    x, ref = x.clamp(0, 1).double(), ref.double()
    n_ch, dims = x.shape[1], x.dim() - 2
    w = _gaussian_window(window, sigma, dims).double().expand(n_ch, 1, *(window,) * dims)
    conv = F.conv3d if dims == 3 else F.conv2d

    def blur(t: torch.Tensor) -> torch.Tensor:
        return conv(t, w, groups=n_ch)

    mu_x, mu_y = blur(x), blur(ref)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(ref * ref) - mu_y**2
    cov = blur(x * ref) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(s.mean())


def mia_metrics(scores: np.ndarray, is_member: np.ndarray) -> dict[str, float]:
    """AUC and TPR at 1 % and 0.1 % FPR of a membership score (higher = more likely a member)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    scores, is_member = np.asarray(scores, dtype=np.float64), np.asarray(is_member, dtype=bool)
    if is_member.all() or not is_member.any():
        raise ValueError("membership metrics need both members and non-members")
    fpr, tpr, _ = roc_curve(is_member, scores)
    n_neg = int((~is_member).sum())

    def at(target: float) -> float:
        return _tpr_at(fpr, tpr, target) if n_neg * target >= 1 else float("nan")

    return {
        "auc": float(roc_auc_score(is_member, scores)),
        "tpr_at_1pct_fpr": at(0.01),
        "tpr_at_0.1pct_fpr": at(0.001),
        "non_members": n_neg,
    }


def _tpr_at(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Highest TPR whose FPR does not exceed ``target`` (0 if no threshold qualifies)."""
    ok = fpr <= target
    return float(tpr[ok].max()) if ok.any() else 0.0


def per_patient(scores: np.ndarray, is_member: np.ndarray, patient_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Patient-level scores: the mean of a patient's image scores (a patient is a member if any image is)."""
    pids = np.asarray(patient_ids)
    uniq, inv = np.unique(pids, return_inverse=True)
    s = np.bincount(inv, weights=np.asarray(scores, dtype=np.float64)) / np.bincount(inv)
    m = np.zeros(len(uniq), dtype=bool)
    np.logical_or.at(m, inv, np.asarray(is_member, dtype=bool))
    return s, m


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two images (flattened)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0
