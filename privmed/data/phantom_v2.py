"""Phantom v2's anatomy, lesions and scanner: the label lives in shape and texture.

Phantom v1's lesion was the brightest structure of its image, so the image's
maximum separated the classes (AUC ≈ 0.95). Here every structure that carries
the label is drawn from intensities the normal anatomy already has, and bright
and dark structures that do not carry it appear in both classes:

- **anatomy**: scalp (bright), bone (dark), cortex (grey matter, a gyral
  boundary of its own per patient), white matter, deep grey nuclei,
  ventricles (CSF), a smooth texture field;
- **distractors, in both classes**: calcifications (the brightest dots of the
  image, like the pineal gland's and the choroid plexus'), vessels (bright
  lines) and perivascular spaces / lacunes (dark dots), a patient-specific
  number of each;
- **lesions**, added to the tissue they sit in: *circumscribed* =
  ring-enhancing, a rim brighter than white matter (about as bright as a
  vessel, below the scalp) around a heterogeneous core darker by as much
  (grey-matter to CSF level), so the lesion adds no mean intensity;
  *infiltrative* = an irregular, diffusely bounded region of heterogeneous
  texture of mean ~0. Each kind has its own location prior (circumscribed:
  white matter in the image's right lower quadrant; infiltrative: in the
  left upper one; spread 0.14 of the head's half-axes), so the classes
  differ in where lesions are (the class-1 mask mean is a localised map a
  model-inversion result can be scored against). A darker oedema
  halo, tried first, gave the pixel-wise logistic regression its signal and
  was left out;
- **scanner**: as in v1 (PSF blur, gamma, bias field, gain/offset, Rician
  noise; wider ranges), then **per-image intensity normalisation** (the 1st
  and 75th percentiles map to 0 and 0.6), as a preprocessing pipeline would,
  so a global intensity level carries neither class nor, directly, site.

Coordinates are canonical (the image spans [-1, 1]; a head is ~0.8 across).
``privmed.data.phantom`` composes these into cohorts and sites.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit

# Scanner parameter ranges that differ from v1's (the rest are v1's): wider,
# so that a model trained on one scanner loses accuracy on another.
SCANNER_OVERRIDES = {
    "gamma": (0.6, 1.6),
    "bias_amplitude": (0.05, 0.4),
    "bias_curvature": (-0.2, 0.2),
    "blur_sigma_px": (0.3, 1.1),  # at 32 px; scaled with image size
    "noise_sigma": (0.02, 0.05),
}

# Tissue intensities (before the scanner): the normal range the lesions stay in.
WM, GM, CSF = (0.62, 0.70), (0.40, 0.48), (0.10, 0.20)
SCALP = (0.95, 1.1)
CALCIFICATION = 0.35  # added to tissue: the brightest dots, in both classes
VESSEL = (0.12, 0.2)  # added to white matter
NORMAL_LEVEL = 0.6  # where per-image normalisation puts the 75th percentile
# The per-image normalisation as (percentile, value) anchors, then clipped to [0, 1]: public preprocessing, which a
# gradient-inversion attacker may impose on its reconstruction (privmed.attacks.gradient_inversion).
NORMALISATION = ((1.0, 0.0), (75.0, NORMAL_LEVEL))
# Lesion knobs (what sets how hard the task is).
LESION_RADIUS = (0.21, 0.3)
RIM = (0.2, 0.27)  # rim contrast, added to tissue (white matter + rim <= scalp); the core is darker by as much
TEXTURE = (0.32, 0.4)  # infiltrative lesion: texture amplitude
TEXTURE_WAVELENGTH = 0.3
LESION_DEPTH, LESION_MIN_FRAC = 0.6, 0.6
# Lesion location priors per kind: centre (fraction of head half-axes) and spread.
LOCATION_PRIOR = {1: ((0.42, 0.25), 0.14), 2: ((-0.4, -0.5), 0.14)}


def _n(rng: np.random.Generator, lam: float) -> int:
    return int(rng.poisson(lam))


def draw_anatomy(rng: np.random.Generator, lesion: int) -> dict[str, Any]:
    """One patient's anatomy, distractors and (for ``lesion`` 1 or 2) lesion; all draws happen for every patient."""
    a: dict[str, Any] = {
        "head_a": rng.uniform(0.68, 0.80),
        "head_b": rng.uniform(0.80, 0.92),
        "head_tilt": rng.normal(0, 0.06),
        "skull": rng.uniform(0.08, 0.12),
        "scalp_int": rng.uniform(*SCALP),
        "wm": rng.uniform(*WM),
        "gm": rng.uniform(*GM),
        "csf": rng.uniform(*CSF),
        "cortex": rng.uniform(0.12, 0.2),
        "gyri": int(rng.integers(9, 15)),
        "gyri_amp": rng.uniform(0.3, 0.6),
        "gyri_phase": rng.uniform(0, 2 * np.pi, size=2),
        "vent_sep": rng.uniform(0.09, 0.15),
        "vent_a": rng.uniform(0.05, 0.10),
        "vent_b": rng.uniform(0.14, 0.26),
        "vent_y": rng.uniform(-0.12, 0.04),
        "vent_angle": rng.uniform(0.1, 0.4),
        "nuclei": rng.uniform(0.1, 0.16),
        "blob_xy": rng.uniform(-0.5, 0.5, size=(6, 2)),
        "blob_amp": rng.uniform(0.02, 0.06, size=6) * rng.choice([-1.0, 1.0], size=6),
        "blob_w": rng.uniform(0.08, 0.2, size=6),
        "lesion": lesion,
    }
    # Distractors: positions (fractions of the brain's half-axes), sizes, slice extent.
    rate = rng.uniform(0.5, 1.5)  # some patients have many, some few
    a["calc"] = [
        (rng.uniform(-0.6, 0.6, 2), rng.uniform(0.025, 0.045), rng.uniform(-0.4, 0.4))
        for _ in range(_n(rng, 1.2 * rate))
    ]
    a["vessels"] = [
        (
            rng.uniform(-0.6, 0.6, 2),
            rng.uniform(0, np.pi),
            rng.uniform(0.12, 0.35),
            rng.uniform(0.02, 0.035),
            rng.uniform(*VESSEL),
            rng.uniform(-0.4, 0.4),
        )
        for _ in range(_n(rng, 3.0 * rate))
    ]
    a["spaces"] = [
        (rng.uniform(-0.6, 0.6, 2), rng.uniform(0.03, 0.06), rng.uniform(-0.4, 0.4)) for _ in range(_n(rng, 2.0 * rate))
    ]
    # Lesion (drawn for everyone so that the stream does not depend on the label).
    kind = lesion if lesion else 1
    (cx, cy), spread = LOCATION_PRIOR[kind]
    a["les_xy"] = np.array([cx, cy]) + rng.normal(0, spread, size=2)
    a["les_r"] = rng.uniform(*LESION_RADIUS)
    a["les_z"] = rng.uniform(-0.3, 0.3)
    a["rim"] = rng.uniform(*RIM)
    a["rim_w"] = rng.uniform(0.35, 0.45)  # rim width as a fraction of the radius
    a["texture"] = rng.uniform(*TEXTURE)
    a["les_harm"] = rng.uniform(0.15, 0.3, size=3)
    a["les_phase"] = rng.uniform(0, 2 * np.pi, size=3)
    a["tex_k"] = rng.normal(size=(4, 2))
    a["tex_phase"] = rng.uniform(0, 2 * np.pi, size=4)
    return a


def _visible(z: float, z0: float, depth: float) -> float:
    """Visible fraction of a structure centred on slice ``z0`` with half-extent ``depth``."""
    return float(np.sqrt(max(0.0, 1 - ((z - z0) / depth) ** 2)))


def _texture(anat: dict[str, Any], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Heterogeneous lesion texture in about [-1, 1]: a few plane waves of one wavelength, random directions."""
    k = anat["tex_k"] / np.linalg.norm(anat["tex_k"], axis=1, keepdims=True) * (2 * np.pi / TEXTURE_WAVELENGTH)
    return sum(np.cos(kx * x + ky * y + p) for (kx, ky), p in zip(k, anat["tex_phase"])) / 2.0


def tissue(anat: dict[str, Any], z: float, ux: np.ndarray, uy: np.ndarray, px: float) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free tissue image and lesion mask of one slice (same contract as v1's)."""
    c, s = np.cos(anat["head_tilt"]), np.sin(anat["head_tilt"])
    hx, hy = c * ux + s * uy, -s * ux + c * uy
    edge = px / 2
    shrink = np.sqrt(1 - (z / 1.3) ** 2)
    A, B = anat["head_a"] * shrink, anat["head_b"] * shrink
    rho = np.sqrt((hx / A) ** 2 + (hy / B) ** 2)

    def inside(r: np.ndarray | float, radius: np.ndarray | float, scale: float) -> np.ndarray:
        return expit((radius - r) / edge * scale)

    head = inside(rho, 1.0, A)
    inner = 1 - anat["skull"] / A
    bone = inside(rho, 1 - 0.45 * anat["skull"] / A, A)
    brain = inside(rho, inner, A)
    phi = np.arctan2(hy, hx)
    gyral = 1 + anat["gyri_amp"] * np.cos(anat["gyri"] * phi + anat["gyri_phase"][0]) * np.cos(
        3 * phi + anat["gyri_phase"][1]
    )
    wm_edge = inner * (1 - anat["cortex"] * gyral)
    wm = inside(rho, wm_edge, A)
    t = anat["scalp_int"] * (head - bone) + 0.12 * (bone - brain) + anat["gm"] * (brain - wm) + anat["wm"] * wm

    # Ventricles (CSF) and deep grey nuclei beside them, fading away from the central slice.
    vscale = _visible(z, 0.0, 0.7)
    if vscale > 0.05:
        vent, nuc = np.zeros_like(t), np.zeros_like(t)
        for side in (-1.0, 1.0):
            ang = side * anat["vent_angle"]
            dx, dy = hx - side * anat["vent_sep"], hy - anat["vent_y"]
            ex, ey = np.cos(ang) * dx + np.sin(ang) * dy, -np.sin(ang) * dx + np.cos(ang) * dy
            r = np.sqrt((ex / (anat["vent_a"] * vscale)) ** 2 + (ey / (anat["vent_b"] * vscale)) ** 2)
            vent = np.maximum(vent, inside(r, 1.0, anat["vent_a"] * vscale))
            rn = np.hypot(hx - side * (anat["vent_sep"] + 0.2), hy - anat["vent_y"]) / (anat["nuclei"] * vscale)
            nuc = np.maximum(nuc, inside(rn, 1.0, anat["nuclei"] * vscale))
        t = t + (anat["gm"] - anat["wm"]) * nuc * wm
        t = t + (anat["csf"] - t) * vent * brain

    for (bx, by), amp, w in zip(anat["blob_xy"], anat["blob_amp"], anat["blob_w"]):
        t = t + amp * np.exp(-((hx - bx * A) ** 2 + (hy - by * B) ** 2) / (2 * w**2)) * brain

    # Distractors (both classes).
    for (bx, by), ang, length, width, amp, z0 in anat["vessels"]:
        f = _visible(z, z0, 0.35)
        if f > 0:
            dx, dy = hx - bx * A, hy - by * B
            along = np.clip(np.cos(ang) * dx + np.sin(ang) * dy, -length * f / 2, length * f / 2)
            d = np.hypot(dx - along * np.cos(ang), dy - along * np.sin(ang))
            t = t + amp * inside(d, width, 1.0) * brain
    for (bx, by), r, z0 in anat["spaces"]:
        f = _visible(z, z0, 0.2)
        if f > 0.3:
            d = np.hypot(hx - bx * A, hy - by * B)
            t = t + (anat["csf"] - t) * inside(d, r * f, 1.0) * brain
    for (bx, by), r, z0 in anat["calc"]:
        f = _visible(z, z0, 0.2)
        if f > 0.3:
            d = np.hypot(hx - bx * A, hy - by * B)
            t = t + CALCIFICATION * inside(d, r * f, 1.0) * brain

    mask = np.zeros(t.shape, dtype=bool)
    if anat["lesion"]:
        frac = max(LESION_MIN_FRAC, _visible(z, anat["les_z"], LESION_DEPTH))
        r = anat["les_r"] * frac
        dx, dy = hx - anat["les_xy"][0] * A, hy - anat["les_xy"][1] * B
        d = np.hypot(dx, dy)
        tex = _texture(anat, hx, hy)
        if anat["lesion"] == 1:  # ring-enhancing: bright rim around a dark, heterogeneous core
            m = inside(d, r, 1.0)
            core = inside(d, r * (1 - anat["rim_w"]), 1.0)
            # The core is as much darker as the rim is brighter (equal and opposite integrals),
            # so the lesion adds no mean intensity for a linear model to find.
            balance = (1 - (1 - anat["rim_w"]) ** 2) / (1 - anat["rim_w"]) ** 2
            change = anat["rim"] * ((m - core) - balance * core) + 0.06 * tex * core
        else:  # infiltrative: irregular outline, diffuse edge, heterogeneous texture of mean ~0
            ph = np.arctan2(dy, dx)
            wobble = 1 + sum(h * np.cos(k * ph + p) for k, h, p in zip((2, 3, 5), anat["les_harm"], anat["les_phase"]))
            rr = 1.15 * r * wobble
            m = expit((rr - d) / (0.3 * rr))
            change = anat["texture"] * tex * m
        t = t + change * brain
        mask = (m > 0.5) & (brain > 0.5)
        if not mask.any():
            mask.flat[int(np.argmin(d))] = True
    return t, mask


def normalise(img: np.ndarray) -> np.ndarray:
    """Per-image intensity normalisation: background (1st percentile) to 0, 75th percentile to ``NORMAL_LEVEL``.

    Clipped to [0, 1].

    The 75th percentile of a slice falls inside the white matter, which a
    lesion (a few % of the pixels) barely moves; an upper percentile would be
    set by the lesion's own rim and darken the whole image when one is present.
    """
    (q_lo, v_lo), (q_hi, v_hi) = NORMALISATION
    lo, mid = np.percentile(img, [q_lo, q_hi])
    return np.clip(v_lo + (v_hi - v_lo) * (img - lo) / max(mid - lo, 1e-6), 0.0, 1.0)
