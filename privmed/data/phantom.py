"""A multi-scanner brain-lesion phantom: a federation's worth of patients, offline.

Each patient has an anatomy of their own, shared by all their images; images
differ by slice position, pose (rotation, translation, scale) and noise. A
patient may carry a lesion, "circumscribed" or "infiltrative"; its visible
size depends on the slice. Labels are per patient: 2 classes (lesion absent /
present, either kind) or 3 (none / circumscribed / infiltrative).

Each site is a scanner with its own PSF blur, contrast curve (gamma), smooth
bias field, gain/offset and Rician noise, its own number of patients and its
own lesion prevalence, so that the natural split has the domain shift,
quantity skew and label skew of real multi-institution data. Optionally a
fraction of patients is referred to a second site, which scans them again
(same anatomy and label, other scanner, same pseudonymous id).

Two versions (``PhantomConfig.version``; data set spec ``phantom`` = v2,
``phantom:v1``):

- **v2** (default; anatomy, lesions and scanner in ``phantom_v2``): the label
  lives in lesion shape and texture — a ring-enhancing lesion whose rim is
  no brighter than a vessel and whose core is as much darker, or an
  irregular heterogeneous one, each kind with its own location prior — while
  calcifications, vessels and dark perivascular spaces appear in both
  classes, and every image is intensity-normalised. Each site also has
  held-out test patients (``test_patients_per_site``, 70 by default, half
  with a lesion): :func:`make_phantom` gives the development patients,
  :func:`make_phantom_test` the held-out ones, :func:`phantom_federation`
  sites whose test sets are the held-out patients (1,120 pooled test images).
- **sequences** (v2, ``sequence=T``, data set spec ``phantom:v2?sequence=T``):
  each image is a follow-up sequence [T, H, W] of one slice position, labelled
  stable / progression (:func:`_scan_sequence`); for HE-CLSTM (issue 14).
- **v1** (until 2026-11): a bright blob, the brightest structure of its image,
  so that the image maximum alone separates the classes (AUC ≈ 0.95); no
  held-out test patients. Kept bit for bit (``tests/data/test_phantom_v1.py``)
  so that old results can be regenerated.

Calibration of v2 (issue 11; ``benchmarks/phantom_calibration.py`` reprints
it, ``tests/data/test_phantom_calibration.py`` checks seed 0). Default
config, natural split, data seed = model seed; development patients split
85/15 into train/validation, scores on the 1,120 held-out test images. Simple
baselines: logistic regression (regularisation chosen on validation) on a
32-bin histogram + percentiles of each image ("hist LR"), on raw pixels
("pixel LR"), and the image maximum alone ("max"). CNN: ``cnn`` (SmallCNN),
plain torch, Adam lr 2e-3, batch 32, until the validation loss has not
improved for 10 epochs and at least 500 steps are done (cap 2,000), best-
validation checkpoint; "bacc" is balanced accuracy. Site-3 (15 patients) and
site-2 (30) are the two smallest sites trained alone, scored on the pooled
test set; "drop" is a model trained on site 0 (site 1) alone, on its own
scanner's test patients minus on the other three's, averaged over the two.

====  =======  ========  =====  =======  =======  =======  =======  =====
seed  hist LR  pixel LR  max    central  central  site-3   site-2   drop
                                AUROC    bacc     bacc     bacc
====  =======  ========  =====  =======  =======  =======  =======  =====
0     0.580    0.600     0.578  0.954    0.874    0.676    0.737    0.259
1     0.515    0.594     0.557  0.959    0.896    0.500    0.501    0.152
2     0.594    0.601     0.573  0.945    0.895    0.594    0.721    0.271
3     0.521    0.567     0.547  0.949    0.876    0.578    0.695    0.137
4     0.583    0.566     0.614  0.936    0.850    0.615    0.627    0.182
mean  0.559    0.586     0.574  0.949    0.878    0.593    0.656    0.200
±CI   0.046    0.022     0.032  0.011    0.023    0.079    0.120    0.076
====  =======  ========  =====  =======  =======  =======  =======  =====

(targets: baselines ≤ 0.70; central AUROC ≥ 0.90; each small site ≥ 8 points
of balanced accuracy below central; drop ≥ 5 points; ±CI is the 95 % t
interval over the five seeds.) With 1,120 test images the binomial standard
error of an accuracy near 0.85 is about ±1 point.

Calibration of v1 (SmallCNN, Adam lr 1e-3, batch 32, 10 epochs, accuracy on
the pooled test split of 120 images): centralised 0.900 / 0.800 / 0.917 and
smallest site alone 0.533 / 0.533 / 0.508 for data seeds 0 / 1 / 2.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from privmed.data import phantom_v1, phantom_v2
from privmed.data.base import ArraySet, Dataset, Federation, PatientMeta
from privmed.data.partition import partition
from privmed.errors import PrivmedError

DEFAULT_PATIENTS_PER_SITE = (60, 45, 30, 15)
DEFAULT_PREVALENCE = (0.5, 0.35, 0.6, 0.25)
LESION_CLASSES = {2: ("none", "lesion"), 3: ("none", "circumscribed", "infiltrative")}
VERSIONS = {1: "v1: bright lesion (until 2026-11)", 2: "v2: lesion in shape and texture, held-out test patients"}
_VERSION_MODULES = {1: phantom_v1, 2: phantom_v2}  # each: draw_anatomy(rng, lesion), tissue(anat, z, ux, uy, px)
# Held-out test patients are balanced at every site, so that on the pooled test
# set a site's prevalence (which its scanner reveals) says nothing about a label.
TEST_PREVALENCE = 0.5
DEFAULT_TEST_PATIENTS = 70  # v2: held-out test patients per site (4 sites x 70 x 4 images = 1,120)

# Intensity scale: tissue is in [0, ~1]; scanner output is divided by this and
# clipped to [0, 1] (a fixed scaling, so that scanner differences survive).
_OUTPUT_SCALE = 1.5


@dataclass(frozen=True)
class PhantomConfig:
    """What the phantom holds; every field is validated.

    ``patients_per_site`` and ``prevalence`` default to per-site values
    (sizes decreasing from 60 to 15, prevalences cycling 0.5, 0.35, 0.6, 0.25)
    for any ``n_sites``. ``prevalence`` is the fraction of a site's patients
    who carry a lesion. ``shared_patient_fraction`` of all patients are also
    scanned at a second site (their images there are new acquisitions).
    """

    n_sites: int = 4
    image_size: int = 32
    patients_per_site: tuple[int, ...] | None = None
    images_per_patient: int = 4
    n_classes: int = 2
    prevalence: tuple[float, ...] | None = None
    shared_patient_fraction: float = 0.0
    seed: int = 0
    version: int = 2
    test_patients_per_site: tuple[int, ...] | None = None
    # v2 only: each image is a volume of image_size³ voxels (the same anatomy sampled at image_size slice
    # positions through the head, one pose per volume), with its 3-D lesion mask
    volume: bool = False
    # v2 only, > 0: each image is a sequence of this many follow-up visits [sequence, H, W] (one slice position,
    # a new pose and acquisition per visit) and the label is progression (see ``_scan_sequence``)
    sequence: int = 0

    def __post_init__(self) -> None:
        def bad(msg: str) -> PrivmedError:
            return PrivmedError(f"invalid phantom config: {msg}")

        if not isinstance(self.n_sites, int) or self.n_sites < 1:
            raise bad(f"n_sites must be an integer >= 1, got {self.n_sites!r}")
        if not isinstance(self.image_size, int) or self.image_size < 16:
            raise bad(f"image_size must be an integer >= 16, got {self.image_size!r}")
        if not isinstance(self.images_per_patient, int) or self.images_per_patient < 1:
            raise bad(f"images_per_patient must be an integer >= 1, got {self.images_per_patient!r}")
        if self.n_classes not in LESION_CLASSES:
            raise bad(
                "n_classes must be 2 (lesion absent/present) or 3 (none/circumscribed/infiltrative), got "
                f"{self.n_classes!r}"
            )
        if not isinstance(self.seed, int):
            raise bad(f"seed must be an integer, got {self.seed!r}")
        if self.volume and self.version == 1:
            raise bad("volumes are a v2 feature: use phantom:v2?volume=1")
        if not isinstance(self.sequence, int) or self.sequence < 0 or self.sequence == 1:
            raise bad(f"sequence must be 0 (single images) or a number of visits >= 2, got {self.sequence!r}")
        if self.sequence and (self.version == 1 or self.volume or self.n_classes != 2):
            raise bad("sequences are a 2-D, 2-class v2 feature (label: progression): use phantom:v2?sequence=4")
        if self.version not in VERSIONS:
            raise bad(
                f"version must be one of {sorted(VERSIONS)} (v1 is the pre-2026-11 phantom, kept for old results), "
                f"got {self.version!r}"
            )

        pps = self.patients_per_site
        if pps is None:
            pps = default_sizes(self.n_sites)
        pps = tuple(pps)
        if len(pps) != self.n_sites:
            raise bad(
                f"patients_per_site has {len(pps)} entries but n_sites is {self.n_sites}; give one count per site or "
                "leave it out"
            )
        if any(not isinstance(p, (int, np.integer)) or p < 1 for p in pps):
            raise bad(f"patients_per_site must be integers >= 1, got {pps}")
        object.__setattr__(self, "patients_per_site", tuple(int(p) for p in pps))

        prev = self.prevalence
        if prev is None:
            prev = tuple(DEFAULT_PREVALENCE[i % len(DEFAULT_PREVALENCE)] for i in range(self.n_sites))
        prev = tuple(float(p) for p in prev)
        if len(prev) != self.n_sites:
            raise bad(
                f"prevalence has {len(prev)} entries but n_sites is {self.n_sites}; give one fraction per site or "
                "leave it out"
            )
        if any(not 0.0 <= p <= 1.0 for p in prev):
            raise bad(f"prevalence values must be fractions in [0, 1], got {prev}")
        object.__setattr__(self, "prevalence", prev)

        f = float(self.shared_patient_fraction)
        if not 0.0 <= f <= 1.0:
            raise bad(f"shared_patient_fraction must be in [0, 1], got {f}")
        if f > 0 and self.n_sites < 2:
            raise bad("shared_patient_fraction > 0 needs at least 2 sites (a patient is shared between two sites)")
        object.__setattr__(self, "shared_patient_fraction", f)

        tps = self.test_patients_per_site
        if tps is None:
            tps = (DEFAULT_TEST_PATIENTS if self.version >= 2 else 0,) * self.n_sites
        tps = tuple(tps)
        if len(tps) != self.n_sites or any(not isinstance(p, (int, np.integer)) or p < 0 for p in tps):
            raise bad(f"test_patients_per_site must be one integer >= 0 per site ({self.n_sites}), got {tps}")
        if self.version == 1 and any(tps):
            raise bad("version 1 has no held-out test patients; leave test_patients_per_site out")
        object.__setattr__(self, "test_patients_per_site", tuple(int(p) for p in tps))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["patients_per_site"] = list(self.patients_per_site)
        d["prevalence"] = list(self.prevalence)
        d["test_patients_per_site"] = list(self.test_patients_per_site)
        return d


def parse_version(arg: str) -> int:
    """The phantom version a data set spec names: ``""`` (the default, v2), ``"v1"`` or ``"v2"``."""
    if not arg:
        return max(VERSIONS)
    if arg.strip().lower() in {f"v{v}" for v in VERSIONS}:
        return int(arg.strip()[1:])
    raise PrivmedError(
        f"unknown phantom version {arg!r}; write 'phantom' (v{max(VERSIONS)}) or one of "
        + ", ".join(f"'phantom:v{v}'" for v in sorted(VERSIONS))
    )


def default_sizes(n_sites: int) -> tuple[int, ...]:
    """Decreasing site sizes from 60 to 15 patients (60, 45, 30, 15 for four sites)."""
    if n_sites == 1:
        return (DEFAULT_PATIENTS_PER_SITE[0],)
    return tuple(int(round(60 - 45 * i / (n_sites - 1))) for i in range(n_sites))


# --------------------------------------------------------------------------- draws


def _rng(seed: int, *path: int) -> np.random.Generator:
    """An independent generator for one (stream, site, patient, ...) path under ``seed``."""
    return np.random.default_rng([seed, *path])


_STREAM_SCANNER, _STREAM_PATIENT, _STREAM_IMAGE, _STREAM_COHORT = 1, 2, 3, 4


# Scanner parameter ranges; each site draws from its own stratum of every range
# (Latin hypercube over sites), so that any seed gives a spread of scanners.
SCANNER_RANGES = {
    "gain": (0.8, 1.2),
    "offset": (-0.02, 0.1),
    "gamma": (0.75, 1.35),
    "bias_amplitude": (0.05, 0.3),
    "bias_angle": (0.0, 2 * np.pi),
    "bias_curvature": (-0.15, 0.15),
    "blur_sigma_px": (0.3, 0.9),  # at 32 px; scaled with image size
    "noise_sigma": (0.03, 0.07),
}


def _draw_scanners(
    rng: np.random.Generator, n_sites: int, image_size: int, ranges: dict[str, tuple[float, float]] = SCANNER_RANGES
) -> list[dict[str, float]]:
    scanners: list[dict[str, float]] = [{} for _ in range(n_sites)]
    for name, (lo, hi) in ranges.items():
        strata = (rng.permutation(n_sites) + rng.uniform(size=n_sites)) / n_sites
        for s in range(n_sites):
            scanners[s][name] = float(lo + (hi - lo) * strata[s])
    for sc in scanners:
        sc["blur_sigma_px"] *= image_size / 32.0
    return scanners


def _acquire(
    t: np.ndarray, scanner: dict[str, float], xx: np.ndarray, yy: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """What the scanner makes of a tissue image: PSF, contrast curve, bias field, gain, Rician noise."""
    img = gaussian_filter(t, scanner["blur_sigma_px"], mode="constant")
    img = np.clip(img, 0, None) ** scanner["gamma"]
    ca, sa = np.cos(scanner["bias_angle"]), np.sin(scanner["bias_angle"])
    bias = 1 + scanner["bias_amplitude"] * (ca * xx + sa * yy) + scanner["bias_curvature"] * (xx**2 + yy**2 - 0.66)
    img = scanner["gain"] * img * bias + scanner["offset"]
    n1, n2 = rng.normal(0, scanner["noise_sigma"], size=(2, *img.shape))
    img = np.sqrt((img + n1) ** 2 + n2**2)  # magnitude image (Rician noise)
    return np.clip(img / _OUTPUT_SCALE, 0, 1)


def _scan(
    anat: dict[str, Any],
    scanner: dict[str, float],
    n_images: int,
    rng: np.random.Generator,
    size: int,
    version: int = 1,
    volume: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``n_images`` slices of one patient on one scanner: images [n,1,H,W] float32, masks uint8.

    ``volume``: each image is instead a volume [1, D, H, W] (D = size): the slices at ``size`` evenly spaced
    positions through the head under one pose, each acquired by the scanner, normalised as one volume (v2).
    """
    tissue = _VERSION_MODULES[version].tissue
    grid = (np.arange(size) + 0.5) / size * 2 - 1
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    px = 2.0 / size
    depth = (size,) if volume else ()
    imgs = np.empty((n_images, 1, *depth, size, size), dtype=np.float32)
    masks = np.zeros((n_images, 1, *depth, size, size), dtype=np.uint8)
    for i in range(n_images):
        zs = np.linspace(-0.5, 0.5, size) if volume else [rng.uniform(-0.5, 0.5)]
        theta, scale = rng.normal(0, 0.12), rng.uniform(0.93, 1.07)
        tx, ty = rng.normal(0, 0.04, size=2)
        c, s = np.cos(theta), np.sin(theta)
        ux = (c * (xx - tx) + s * (yy - ty)) / scale
        uy = (-s * (xx - tx) + c * (yy - ty)) / scale
        planes = [tissue(anat, z, ux, uy, px / scale) for z in zs]
        img = np.stack([_acquire(t, scanner, xx, yy, rng) for t, _ in planes])
        img = img if version == 1 else phantom_v2.normalise(img)  # per image, or per volume
        imgs[i, 0] = img if volume else img[0]
        masks[i, 0] = np.stack([m for _, m in planes]) if volume else planes[0][1]
    return imgs, masks


# Sequences (v2, ``sequence`` > 0): the fraction of non-progressing patients whose lesion is present and stable
# from the first visit on (the rest have none), so that a lesion at the last visit does not by itself mean progression.
STABLE_FRACTION = 0.5
SEQUENCE_CLASSES = ("stable", "progression")


def _scan_sequence(
    anat: dict[str, Any],
    label: int,
    scanner: dict[str, float],
    n_sequences: int,
    rng: np.random.Generator,
    size: int,
    visits: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``n_sequences`` follow-up sequences of one patient: images [n, visits, H, W] float32, masks uint8 alike.

    A sequence is one slice position scanned at ``visits`` visits, each with a
    new pose, noise and normalisation. Label 1 (progression): no lesion at the
    first visit; the lesion appears at a visit drawn from 1..visits-1 at half its
    radius and grows linearly to its full radius at the last visit. Label 0
    (stable): with probability ``STABLE_FRACTION`` the lesion is present at full
    radius at every visit, otherwise there is none. Every draw happens for every
    patient, so the stream does not depend on the label.
    """
    grid = (np.arange(size) + 0.5) / size * 2 - 1
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    px = 2.0 / size
    imgs = np.empty((n_sequences, visits, size, size), dtype=np.float32)
    masks = np.zeros((n_sequences, visits, size, size), dtype=np.uint8)
    stable = rng.uniform() < STABLE_FRACTION
    kind = int(rng.integers(1, 3))
    onset = int(rng.integers(1, visits))
    if label:
        growth = [0.0 if t < onset else 0.5 + 0.5 * (t - onset) / max(visits - 1 - onset, 1) for t in range(visits)]
        growth[-1] = 1.0
    else:
        growth = [1.0 if stable else 0.0] * visits
    for i in range(n_sequences):
        z = rng.uniform(-0.5, 0.5)
        for t, g in enumerate(growth):
            theta, scale = rng.normal(0, 0.12), rng.uniform(0.93, 1.07)
            tx, ty = rng.normal(0, 0.04, size=2)
            c, s = np.cos(theta), np.sin(theta)
            ux = (c * (xx - tx) + s * (yy - ty)) / scale
            uy = (-s * (xx - tx) + c * (yy - ty)) / scale
            visit = {**anat, "lesion": (anat["lesion"] or kind) if g > 0 else 0, "les_r": anat["les_r"] * max(g, 1e-3)}
            t_img, m = phantom_v2.tissue(visit, z, ux, uy, px / scale)
            imgs[i, t] = phantom_v2.normalise(_acquire(t_img, scanner, xx, yy, rng))
            masks[i, t] = m
    return imgs, masks


# --------------------------------------------------------------------------- cohort


@dataclass(frozen=True)
class _Cohort:
    """Every patient of a phantom (development and held-out test), before any image is made."""

    pids: list[str]
    home: list[int]
    labels: list[int]
    anats: list[dict[str, Any]]
    held_out: list[bool]
    meta: dict[str, PatientMeta]
    second: dict[int, int]  # referrals: patient index -> second site


def _cohort(config: PhantomConfig) -> _Cohort:
    """Patients: home site, label, anatomy, quasi-identifiers; referrals to a second site."""
    seed = config.seed
    draw_anatomy = _VERSION_MODULES[config.version].draw_anatomy
    cohort = _rng(seed, _STREAM_COHORT)
    n_dev = sum(config.patients_per_site)
    total = n_dev + sum(config.test_patients_per_site)
    width = max(4, len(str(total)))
    numbers = cohort.permutation(total) + 1  # pseudonyms carry no site, order or role information
    c = _Cohort([], [], [], [], [], {}, {})
    g = 0
    for s, (n, n_test) in enumerate(zip(config.patients_per_site, config.test_patients_per_site)):
        site_rng = _rng(seed, _STREAM_PATIENT, s)
        has = np.zeros(n, dtype=bool)
        has[site_rng.permutation(n)[: int(round(config.prevalence[s] * n))]] = True
        age_mean = site_rng.uniform(48, 62)
        start = dt.date(2014, 1, 1) + dt.timedelta(days=int(site_rng.integers(0, 3 * 365)))
        if n_test:  # held-out patients, half with a lesion at every site (v1 has none)
            has_test = np.zeros(n_test, dtype=bool)
            has_test[site_rng.permutation(n_test)[: int(round(TEST_PREVALENCE * n_test))]] = True
            has = np.concatenate([has, has_test])
        for j in range(n + n_test):
            prng = _rng(seed, _STREAM_PATIENT, s, j)
            kind = int(prng.integers(1, 3)) if has[j] else 0  # 1 circumscribed, 2 infiltrative
            pid = f"P{numbers[g]:0{width}d}"
            age = int(np.clip(round(prng.normal(age_mean + 6 * has[j], 14)), 18, 95))
            sex = str(prng.choice(["F", "M"]))
            date = (start + dt.timedelta(days=int(prng.integers(0, 4 * 365)))).isoformat()
            c.meta[pid] = PatientMeta(patient_id=pid, age=age, sex=sex, acquisition_date=date, site=s)
            c.home.append(s)
            c.labels.append(kind if config.n_classes == 3 else int(kind > 0))
            c.anats.append(draw_anatomy(prng, kind))
            c.pids.append(pid)
            c.held_out.append(j >= n)
            g += 1

    # Referrals: a fraction of the development patients is scanned again at a second site.
    dev = [p for p in range(total) if not c.held_out[p]]
    n_shared = int(round(config.shared_patient_fraction * n_dev))
    shared = np.sort(cohort.choice(n_dev, size=n_shared, replace=False)) if n_shared else np.array([], dtype=int)
    for q in shared:
        p = dev[int(q)]
        other = [s for s in range(config.n_sites) if s != c.home[p]]
        c.second[p] = int(other[int(cohort.integers(len(other)))])
    return c


def _acquisitions(config: PhantomConfig, c: _Cohort, held_out: bool) -> Dataset:
    """Scan the development (``held_out=False``) or held-out test patients, grouped by the site that scans them."""
    seed, size, k = config.seed, config.image_size, config.images_per_patient
    ranges = SCANNER_RANGES if config.version == 1 else {**SCANNER_RANGES, **phantom_v2.SCANNER_OVERRIDES}
    scanners = _draw_scanners(_rng(seed, _STREAM_SCANNER), config.n_sites, size, ranges)
    total = len(c.pids)
    images, masks, y, ids, site_of = [], [], [], [], []
    for s in range(config.n_sites):
        visits = [p for p in range(total) if c.home[p] == s and c.held_out[p] == held_out]
        visits += [p for p in sorted(c.second) if c.second[p] == s and c.held_out[p] == held_out]
        for p in visits:
            if config.sequence:
                im, m = _scan_sequence(
                    c.anats[p], c.labels[p], scanners[s], k, _rng(seed, _STREAM_IMAGE, s, p), size, config.sequence
                )
            else:
                im, m = _scan(
                    c.anats[p], scanners[s], k, _rng(seed, _STREAM_IMAGE, s, p), size, config.version, config.volume
                )
            images.append(im)
            masks.append(m)
            y += [c.labels[p]] * k
            ids += [c.pids[p]] * k
            site_of += [s] * k
    if not images:
        raise PrivmedError("this phantom has no held-out test patients (version 1, or test_patients_per_site all 0)")
    data = ArraySet(
        images=np.concatenate(images),
        labels=np.asarray(y, dtype=np.int64),
        patient_ids=np.asarray(ids, dtype=str),
        masks=np.concatenate(masks),
    )
    info = {
        "config": config.to_dict(),
        "scanners": scanners,
        "classes": list(SEQUENCE_CLASSES if config.sequence else LESION_CLASSES[config.n_classes]),
        "sequence": config.sequence,
        "shared_patients": {c.pids[p]: [c.home[p], c.second[p]] for p in sorted(c.second)},
        "part": "held-out test" if held_out else "development",
    }
    return Dataset(
        name="phantom" if config.version == 1 else f"phantom:v{config.version}",  # v1 results always said "phantom"
        n_classes=config.n_classes,
        data=data,
        site_of=np.asarray(site_of, dtype=np.int64),
        patients={pid: c.meta[pid] for pid in dict.fromkeys(ids)},
        info=info,
    )


def make_phantom(config: PhantomConfig) -> Dataset:
    """The development patients (to split into train/validation) of the phantom ``config`` describes; a pure
    function of it."""
    return _acquisitions(config, _cohort(config), held_out=False)


def make_phantom_test(config: PhantomConfig) -> Dataset:
    """The held-out test patients of each site (v2: ``test_patients_per_site``), disjoint from
    :func:`make_phantom`'s."""
    return _acquisitions(config, _cohort(config), held_out=True)


def phantom_federation(
    config: PhantomConfig,
    *,
    split: str = "natural",
    seed: int = 0,
    val_fraction: float = 0.15,
    n_sites: int | None = None,
) -> Federation:
    """Sites whose train/validation come from the development patients and whose test is the held-out patients.

    The development patients are split by ``split`` into sites and then into
    train/validation (no test); the held-out patients are dealt to sites by
    the same split (under ``natural``: each stays at the scanner that made its
    images) and become the sites' test sets, so the pooled test set is large
    (≥ 1,000 images by default) and shares no patient with training.
    ``n_sites`` defaults to the phantom's number of scanners (the only choice
    under ``natural``).
    """
    n = config.n_sites if n_sites is None else n_sites
    dev_fed = partition(
        make_phantom(config), n_sites=n, split=split, seed=seed, val_fraction=val_fraction, test_fraction=0.0
    )
    test = make_phantom_test(config)
    test_fed = partition(test, n_sites=n, split=split, seed=seed, val_fraction=0.0, test_fraction=0.0)
    sites = tuple(dataclasses.replace(d, test=t.train) for d, t in zip(dev_fed.sites, test_fed.sites))
    return dataclasses.replace(dev_fed, sites=sites, patients={**dev_fed.patients, **test.patients})
