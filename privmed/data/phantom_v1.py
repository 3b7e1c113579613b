"""Phantom v1's anatomy and lesions (until 2026-11), kept bit for bit for old results.

The lesion is a bright blob ("circumscribed": compact, sharp-edged;
"infiltrative": irregular, diffuse, lower contrast) with an oedema halo, the
brightest structure of its image: the image maximum alone separates the
classes (AUC ≈ 0.95), which is why v2 exists. ``tests/data/test_phantom_v1.py``
pins the bytes this module produces.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit

# Lesion size (radius, canonical units where the head is ~0.8) and contrast
# (added to tissue ~0.5): the knobs that set how hard the task is.
LESION_RADIUS = (0.12, 0.2)
LESION_CONTRAST = (0.6, 0.8)
SKULL_INTENSITY = (0.85, 1.0)
EDEMA = (2.0, 0.35)  # perilesional oedema: width (x lesion radius), relative contrast
LESION_DEPTH = 0.6  # half-extent of a lesion across slices (slices span [-0.5, 0.5])
LESION_MIN_FRAC = 0.5  # smallest visible radius, as a fraction of the lesion's radius


def draw_anatomy(rng: np.random.Generator, lesion: int) -> dict[str, Any]:
    """Shape parameters of one patient's head (canonical coordinates in [-1, 1])."""
    a = {
        "head_a": rng.uniform(0.68, 0.80),
        "head_b": rng.uniform(0.80, 0.92),
        "head_tilt": rng.normal(0, 0.06),
        "skull": rng.uniform(0.07, 0.11),
        "skull_int": rng.uniform(*SKULL_INTENSITY),
        "brain_int": rng.uniform(0.45, 0.58),
        "vent_int": rng.uniform(0.1, 0.22),
        "vent_sep": rng.uniform(0.09, 0.15),
        "vent_a": rng.uniform(0.05, 0.10),
        "vent_b": rng.uniform(0.14, 0.26),
        "vent_y": rng.uniform(-0.12, 0.04),
        "vent_angle": rng.uniform(0.1, 0.4),
        "blob_xy": rng.uniform(-0.5, 0.5, size=(6, 2)),
        "blob_amp": rng.uniform(0.03, 0.09, size=6) * rng.choice([-1.0, 1.0], size=6),
        "blob_w": rng.uniform(0.08, 0.2, size=6),
        "lesion": lesion,
    }
    # Lesion (drawn for everyone so that the stream does not depend on the label).
    ang, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0.25, 0.6)
    a["les_xy"] = np.array([rad * np.cos(ang) * a["head_a"], rad * np.sin(ang) * a["head_b"]])
    a["les_r"] = rng.uniform(*LESION_RADIUS)
    a["les_z"] = rng.uniform(-0.3, 0.3)
    a["les_contrast"] = rng.uniform(*LESION_CONTRAST)
    a["les_harm"] = rng.uniform(0.1, 0.3, size=3)
    a["les_phase"] = rng.uniform(0, 2 * np.pi, size=3)
    return a


def tissue(anat: dict[str, Any], z: float, ux: np.ndarray, uy: np.ndarray, px: float) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free tissue image and lesion mask of one slice in canonical coordinates."""
    c, s = np.cos(anat["head_tilt"]), np.sin(anat["head_tilt"])
    hx, hy = c * ux + s * uy, -s * ux + c * uy
    shrink = np.sqrt(1 - (z / 1.3) ** 2)  # the head narrows away from the central slice
    rho = np.sqrt((hx / (anat["head_a"] * shrink)) ** 2 + (hy / (anat["head_b"] * shrink)) ** 2)
    edge = px / 2
    head = expit((1 - rho) / edge * anat["head_a"])
    inner = 1 - anat["skull"] / anat["head_a"]
    brain = expit((inner - rho) / edge * anat["head_a"])
    t = anat["skull_int"] * (head - brain) + anat["brain_int"] * brain

    # Ventricles: two tilted ellipses, shrinking to nothing away from the centre slice.
    vscale = np.sqrt(max(0.0, 1 - (z / 0.7) ** 2))
    if vscale > 0.05:
        vent = np.zeros_like(t)
        for side in (-1.0, 1.0):
            ang = side * anat["vent_angle"]
            dx, dy = hx - side * anat["vent_sep"], hy - anat["vent_y"]
            ex, ey = np.cos(ang) * dx + np.sin(ang) * dy, -np.sin(ang) * dx + np.cos(ang) * dy
            r = np.sqrt((ex / (anat["vent_a"] * vscale)) ** 2 + (ey / (anat["vent_b"] * vscale)) ** 2)
            vent = np.maximum(vent, expit((1 - r) / edge * anat["vent_a"] * vscale))
        t = t - (anat["brain_int"] - anat["vent_int"]) * vent * brain

    # Tissue texture (grey/white matter variation): patient-specific smooth bumps.
    for (bx, by), amp, w in zip(anat["blob_xy"], anat["blob_amp"], anat["blob_w"]):
        t = t + amp * np.exp(-((hx - bx * anat["head_a"]) ** 2 + (hy - by * anat["head_b"]) ** 2) / (2 * w**2)) * brain

    mask = np.zeros(t.shape, dtype=bool)
    if anat["lesion"]:
        frac = np.sqrt(max(LESION_MIN_FRAC**2, 1 - ((z - anat["les_z"]) / LESION_DEPTH) ** 2))  # visible size by slice
        r = anat["les_r"] * frac
        dx, dy = hx - anat["les_xy"][0], hy - anat["les_xy"][1]
        d = np.sqrt(dx**2 + dy**2)
        if anat["lesion"] == 1:  # circumscribed: compact, sharp edge, bright
            m = expit((r - d) / edge)
            contrast = anat["les_contrast"] + 0.05
        else:  # infiltrative: irregular outline, diffuse edge, lower contrast, larger
            phi = np.arctan2(dy, dx)
            wobble = 1 + sum(h * np.cos(k * phi + p) for k, h, p in zip((2, 3, 5), anat["les_harm"], anat["les_phase"]))
            rr = 1.3 * r * wobble
            m = expit((rr - d) / (0.35 * rr))
            contrast = 0.7 * anat["les_contrast"]
        edema = EDEMA[1] * anat["les_contrast"] * np.exp(-(d**2) / (2 * (EDEMA[0] * r) ** 2))
        t = t + (contrast * m + edema * (1 - m)) * brain
        mask = (m > 0.5) & (brain > 0.5)
        if not mask.any():  # tiny lesion on a coarse grid: mark the pixel nearest its centre
            mask.flat[int(np.argmin(d))] = True
    return t, mask
