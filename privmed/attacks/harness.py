"""The evaluator's side of every attack: it holds the ground truth, gives each
attacker only what its threat model grants, and scores the outcome.

Each ``measure_*`` takes a :class:`Target` (a finished run rebuilt from its
saved config and model) and returns plain numbers for ``audit.json``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from privmed.attacks import adversarial, linkage, membership, model_inversion, poisoning
from privmed.attacks import gradient_inversion as gi
from privmed.attacks.metrics import mia_metrics, per_patient
from privmed.config import RunConfig
from privmed.data.base import ArraySet, Federation
from privmed.engine.result import predict
from privmed.engine.session import plan_of, resolve
from privmed.protocols.base import Predictor
from privmed.site import ModelSpec, load_arrays
from privmed.threat import AGGREGATE, INVERTIBLE, PARTIAL, not_invertible

# Seed salts: each keeps one of the harness's draws apart from the others made from the same run seed.
PROBE_BATCH_SALT = 29  # which training images the inversion probe's victim batch holds
# LiRA's positive control: the target's network and optimiser (Adam), batch 8, this step size, this long on this
# many images: it memorises them
CONTROL_EPOCHS, CONTROL_IMAGES, CONTROL_LR = 100, 32, 1e-2
NON_MEMBERS_WANTED = 1000  # so that TPR at 0.1 % FPR is not TPR at zero false positives
ATTACKER_COHORT_SALT = 31  # which held-out patients are LiRA's attacker cohort, which its non-member candidates


@dataclass
class Target:
    """A finished run as the harness sees it (ground truth included)."""

    config: RunConfig
    fed: Federation
    spec: ModelSpec
    predictor: Predictor


class Ensemble(nn.Module):
    """Several weight sets as one white-box model: log of the mean softmax (what the ensemble predicts)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.stack([torch.softmax(m(x), 1) for m in self.members]).mean(0).clamp_min(1e-12))


def released_model(t: Target) -> nn.Module:
    members = []
    for arrays in t.predictor if isinstance(t.predictor, list) else [t.predictor]:
        m = t.spec.build()
        load_arrays(m, arrays)
        members.append(m.eval())
    return members[0] if len(members) == 1 else Ensemble(members).eval()


def _proba(t: Target, data: ArraySet) -> np.ndarray:
    return predict(t.spec, t.predictor, data)


def _mia(scores: np.ndarray, is_member: np.ndarray, pids: np.ndarray) -> dict[str, Any]:
    return {"image": mia_metrics(scores, is_member), "patient": mia_metrics(*per_patient(scores, is_member, pids))}


def _candidates(t: Target) -> tuple[ArraySet, np.ndarray]:
    """Members: the training images of the sites that trained (the protocol's ``trainers``); non-members: held-out
    images."""
    r = resolve(t.config)
    sites = [t.fed.sites[i] for i in r.protocol.trainers(r.options, len(t.fed.sites))]
    members = ArraySet.concat([s.train for s in sites])
    non_members = ArraySet.concat([s.val for s in sites] + [s.test for s in sites])
    return membership.candidates(members, non_members, seed=t.config.seed)


def measure_loss_threshold(t: Target) -> dict[str, Any]:
    cand, is_member = _candidates(t)
    scores = membership.loss_threshold_scores(_proba(t, cand), cand.labels)
    return {
        "attack": "loss threshold (Yeom 2018)",
        "candidates": len(cand),
        **_mia(scores, is_member, cand.patient_ids),
    }


def _split_by_patient(data: ArraySet, seed: int, fraction: float) -> tuple[ArraySet, ArraySet]:
    """``data`` split by patient: about ``fraction`` of the patients (the attacker's cohort), the rest (non-members)."""
    rng = np.random.default_rng([seed, ATTACKER_COHORT_SALT])
    pids = rng.permutation(np.unique(data.patient_ids))
    first = np.isin(data.patient_ids, pids[: max(1, int(round(fraction * len(pids))))])
    return data.subset(np.flatnonzero(first)), data.subset(np.flatnonzero(~first))


def _lira_control(
    shadows: list[nn.Module],
    members: list[np.ndarray],
    aux: ArraySet,
    *,
    global_variance: bool,
    memorising: nn.Module | None = None,
    memorised: np.ndarray | None = None,
) -> dict[str, Any]:
    """Positive control: LiRA against an undefended model whose members the harness knows.

    The control target is shadow 0, or ``memorising`` (a model trained until
    it memorises the aux images ``memorised``) when given. Each aux image is
    scored against the other shadows that did not train on it (leave-one-out
    offline LiRA).
    """
    from privmed.tasks import predict_proba

    phi = np.stack([membership.logit_confidence(predict_proba(m, aux), aux.labels) for m in shadows])
    if memorising is not None:
        phi[0] = membership.logit_confidence(predict_proba(memorising, aux), aux.labels)
    trained = np.zeros(phi.shape, dtype=bool)
    for i, idx in enumerate(members):
        trained[i, idx] = True
    if memorising is not None:
        trained[0] = False
        trained[0, memorised] = True
    out_phi = np.where(trained[1:], np.nan, phi[1:])
    ok = (~trained[1:]).sum(0) >= 2  # need two OUT shadows for a variance
    mu = np.nanmean(out_phi[:, ok], 0)
    var = np.nanvar(out_phi[:, ok], 0, ddof=1)
    sd = np.sqrt(np.nanmean(var) if global_variance else var) + 1e-6
    scores = (phi[0, ok] - mu) / sd
    is_member = trained[0, ok]
    loss = membership.loss_threshold_scores(
        predict_proba(memorising if memorising is not None else shadows[0], aux), aux.labels
    )[ok]
    return {
        "target": (
            f"an undefended model trained to memorisation ({CONTROL_EPOCHS} epochs) on {CONTROL_IMAGES} attacker images"
            if memorising is not None
            else "shadow model 0: the target's recipe on half the attacker's cohort, no defence"
        ),
        "candidates": int(ok.sum()),
        "lira": mia_metrics(scores, is_member),
        "loss_threshold": mia_metrics(loss, is_member),
    }


def measure_lira(t: Target, *, n_shadows: int) -> dict[str, Any]:
    """Offline LiRA with a global variance; the attacker's cohort: held-out patients of the same sites.

    Held-out patients of the training sites (same scanners, never trained on)
    are split by patient: a part is the attacker's own data (its shadows
    train on it; 15-50 %, the least that leaves 1,000 non-members), the rest
    are the non-member candidates; every training image is a member candidate. Reported with the null (chance) and a
    positive control on an undefended shadow model.
    """
    r = resolve(t.config)
    sites = [t.fed.sites[i] for i in r.protocol.trainers(r.options, len(t.fed.sites))]
    members = ArraySet.concat([s.train for s in sites])
    held_out = ArraySet.concat([s.val for s in sites] + [s.test for s in sites])
    # as many non-members as TPR at 0.1 % FPR needs (1,000) where the held-out data allow, the rest to the attacker
    fraction = float(np.clip(1 - NON_MEMBERS_WANTED / max(len(held_out), 1), 0.15, 0.5))
    aux, non_members = _split_by_patient(held_out, t.config.seed, fraction)
    epochs = min(10, t.config.train.rounds * t.config.train.local_epochs)
    cfg = membership.LiraConfig(n_shadows=n_shadows, epochs=epochs, seed=t.config.seed)
    shadow_members: list[np.ndarray] = []
    shadows = membership.train_shadows(
        t.spec.build,
        aux,
        config=cfg,
        batch_size=t.config.train.batch_size,
        lr=t.config.train.lr,
        members_out=shadow_members,
    )
    cand = ArraySet.concat([members, non_members])
    is_member = np.r_[np.ones(len(members), bool), np.zeros(len(non_members), bool)]
    scores = membership.lira(_proba(t, cand), cand, shadows, global_variance=cfg.global_variance)
    # the control: the target's architecture and optimiser on shadow 0's members, trained until it memorises them
    from privmed.tasks import train_local

    memorised = shadow_members[0][:CONTROL_IMAGES]
    memorising = t.spec.build(t.config.seed)
    train_local(
        memorising,
        aux.subset(memorised),
        task=t.spec.task,
        epochs=CONTROL_EPOCHS,
        batch_size=8,
        lr=CONTROL_LR,
        seed=t.config.seed,
    )
    return {
        "attack": "LiRA offline, global variance (Carlini 2022)",
        "shadows": n_shadows,
        "shadow_epochs": epochs,
        "attacker_images": len(aux),
        "candidates": len(cand),
        "members": int(is_member.sum()),
        "non_members": int((~is_member).sum()),
        **_mia(scores, is_member, cand.patient_ids),
        "null": {"auc": 0.5, "tpr_at_fpr": "equal to the FPR (a score independent of membership)"},
        "positive_control": _lira_control(
            shadows,
            shadow_members,
            aux,
            global_variance=cfg.global_variance,
            memorising=memorising,
            memorised=memorised,
        ),
    }


def measure_inversion(
    t: Target, *, batch_sizes: tuple[int, ...], method: str = "ig", iterations: int | None = None
) -> dict[str, Any]:
    """Gradient inversion against each party's actual view (:mod:`privmed.threat`), for a probe round.

    The probe round starts from the final global model. A party that sees one
    site's update gets the first site's one local step on a batch of B of its
    training images (the mechanism's trainer and client mods applied, unless
    they encrypt: the party decrypts); a party that sees the aggregate gets the
    mean of every site's step, of n_sites * B images; under DSSGD the site
    uploads only its θu selection (DSSGD's own ``select``, SVT noise included
    when on) and the attacker matches those coordinates only. Parties that see
    ciphertext, raw data or nothing are "not applicable", with the reason.
    Parties with the same kind of view share one probe.
    """
    preset = gi.PRESETS[method]
    config = dataclasses.replace(preset, iterations=iterations or preset.iterations, seed=t.config.seed)
    # the probe is the attacker's simulation, not a release: prepare the mechanism (per-site noise, clipping)
    # as the run did, but without its budget ledger, so the probe neither charges nor is refused
    probe = dataclasses.replace(
        t.config,
        privacy={
            k: v for k, v in t.config.privacy.items() if k not in ("ledger", "ledger_key", "budget", "budget_delta")
        },
    )
    r = resolve(probe)
    r.mechanism.check(plan_of(probe, t.fed, r))
    r.mechanism.one_step_per_call()  # DP-SGD, P3SGD: the victim takes one noisy step on its batch
    out: dict[str, Any] = {
        "attack": f"{method.upper()} ({'Zhu 2019' if method == 'dlg' else 'Geiping 2020'})",
        "per_party": {},
    }
    by_kind: dict[str, dict[str, Any]] = {}
    for party, view in r.protocol.all_views().items():
        if view.kind not in INVERTIBLE:
            out["per_party"][party] = {"not_applicable": not_invertible(party, view)}
            continue
        if view.kind not in by_kind:
            by_kind[view.kind] = _invert_view(t, r, view.kind, batch_sizes=batch_sizes, config=config)
        out["per_party"][party] = {"observed": view.sees, **by_kind[view.kind]}
    out["positive_control"] = _inversion_control(t)
    return out


def _inversion_control(t: Target) -> dict[str, Any]:
    """Positive control: DLG on the raw gradient of DLG's own victim network (sigmoid LeNet) for one probe image.

    Shows the attacker works where the literature says it should, in the same
    audit; the nulls (flat guess, random image) come with every score.
    """
    import dataclasses as dc

    train = t.fed.sites[0].train
    i = int(np.random.default_rng([t.config.seed, PROBE_BATCH_SALT]).integers(len(train)))
    x, y = torch.from_numpy(train.images[i : i + 1]), torch.from_numpy(train.labels[i : i + 1])
    model = gi.LeNetZhu(x.shape[1], t.fed.n_classes, x.shape[-1], seed=t.config.seed, spatial_dims=x.dim() - 2)
    grad = gi.model_gradient(model, x, y)
    labels = gi.infer_labels(grad, n_classes=t.fed.n_classes, batch_size=1)
    # DLG's preset: 300 L-BFGS iterations, up to 4 restarts (it stalls from some starts), stopping at a converged
    # match; 100 iterations left 3 of 5 phantom seeds at 13-19 dB, 300 reach 28-52 dB on 4 of 5
    cfg = dc.replace(gi.PRESETS["dlg"], seed=t.config.seed)
    recon = gi.reconstruct(model, grad, shape=tuple(x.shape[1:]), labels=labels, config=cfg)
    return {
        "target": "LeNetZhu (DLG's sigmoid network), one image's raw gradient, DLG",
        **gi.score_reconstruction(recon, x),
    }


def _invert_view(t: Target, r: Any, kind: str, *, batch_sizes: tuple[int, ...], config: Any) -> dict[str, Any]:
    """One probe: the update a party of view ``kind`` gets, inverted per batch size, with the raw-gradient reference."""
    mech = r.mechanism
    weights = t.predictor[0] if isinstance(t.predictor, list) else t.predictor
    model = t.spec.build()
    load_arrays(model, weights)
    lr = t.config.train.lr
    rng = np.random.default_rng([t.config.seed, PROBE_BATCH_SALT])
    sites = list(range(len(t.fed.sites))) if kind == AGGREGATE else [0]
    out: dict[str, Any] = {"view": kind, "per_batch_size": {}}
    mask = None
    for b in batch_sizes:
        truth, truth_labels, grads = [], [], []
        for i in sites:
            train = t.fed.sites[i].train
            batch = train.subset(np.sort(rng.choice(len(train), size=min(b, len(train)), replace=False)))
            mods = [] if mech.encrypts else mech.client_mods(i)
            sent, received = gi.observe_site_update(
                batch, t.spec, weights, mods=mods, trainer=mech.trainer(i), lr=lr, seed=t.config.seed
            )
            if kind == PARTIAL and r.protocol.probe_upload:  # DSSGD: the site uploads only its θu selection
                received, mask = r.protocol.probe_upload(
                    model,
                    sent,
                    received,
                    r.options,
                    seed=t.config.seed,
                    site=i,
                    reproducible_noise=t.config.reproducible_noise,
                )
                out["uploaded_fraction"] = sum(int(m.sum()) for m in mask) / sum(m.numel() for m in mask)
            grads.append(gi.update_to_gradient(model, sent, received, lr))
            truth.append(torch.from_numpy(batch.images))
            truth_labels.append(batch.labels)
        gradient = [torch.stack(g).mean(0) for g in zip(*grads)]  # what the party sees
        x = torch.cat(truth)
        labels = gi.infer_labels(gradient, n_classes=t.spec.n_classes, batch_size=len(x))
        start = time.perf_counter()
        recon = gi.reconstruct(model, gradient, shape=tuple(x.shape[1:]), labels=labels, config=config, mask=mask)
        row = {**gi.score_reconstruction(recon, x), "seconds": time.perf_counter() - start}
        # Reference, computed by the harness: the same attack had the site sent its raw gradient (FedSGD / DSSGD).
        y = torch.from_numpy(np.concatenate(list(truth_labels)))
        raw = gi.reconstruct(model, gi.model_gradient(model, x, y), shape=tuple(x.shape[1:]), labels=y, config=config)
        row["psnr_if_raw_gradient_sent"] = gi.score_reconstruction(raw, x)["psnr"]
        out["per_batch_size"][str(len(x))] = row
    return out


def measure_model_inversion(t: Target) -> dict[str, Any]:
    """Model inversion of the released model, beside the same attack on an untrained model (the null)."""
    untrained = t.spec.build(t.config.seed).eval()
    sim = model_inversion.inversion_with_null(released_model(t), untrained, t.fed.pooled("train"), t.fed.n_classes)
    return {"attack": "model inversion (Fredrikson 2015)", **sim}


def measure_adversarial(
    t: Target, *, eps: tuple[float, ...] = (0.0, 2 / 255, 8 / 255), max_images: int = 200
) -> dict[str, Any]:
    test = t.fed.pooled("test")
    test = test.subset(np.arange(min(len(test), max_images)))
    model = released_model(t)
    return {
        "attack": "FGSM (Goodfellow 2015) and PGD-10 (Madry 2018), L-inf",
        "fgsm": adversarial.robust_accuracy(model, test, eps=eps, attack="fgsm"),
        "pgd": adversarial.robust_accuracy(model, test, eps=eps, attack="pgd", seed=t.config.seed),
    }


def measure_backdoor(t: Target, cfg: poisoning.PoisonConfig) -> dict[str, float]:
    """The run's own protocol and mechanism, re-run with malicious sites (:func:`privmed.run.execute`)."""
    from privmed.engine.session import model_spec
    from privmed.run import execute

    poisoned, bad = poisoning.poison_federation(t.fed, cfg)
    result = execute(t.config, fed=poisoned)
    spec = model_spec(t.config, t.fed)
    test = t.fed.pooled("test")
    return {
        "malicious_sites": bad,
        "clean_accuracy": float((predict(spec, result.predictor, test).argmax(1) == test.labels).mean()),
        **poisoning.attack_success(lambda d: predict(spec, result.predictor, d), test, cfg, t.fed.n_classes),
    }


def measure_poisoning(
    t: Target, *, n_malicious: int = 1, kinds: tuple[str, ...] | None = None, aggregators: bool = True
) -> dict[str, Any]:
    """Each poisoning kind through the run's own protocol; for plain FedAvg also under each robust aggregator.

    The aggregator comparison runs both kinds with ``n_malicious`` attackers
    and, where the federation is large enough for Krum with two (n > 6), also
    with ``n_malicious + 1`` (``aggregators_f{f}``); aggregators outside their
    validity condition are recorded as not applicable.
    """
    out: dict[str, Any] = {"attack": "label flip and trigger backdoor (Chen 2017)", "n_malicious": n_malicious}
    n = len(t.fed.sites)
    for kind in kinds or poisoning.KINDS:
        cfg = poisoning.PoisonConfig(kind=kind, n_malicious=n_malicious, seed=t.config.seed)
        out[kind] = {"as_run": measure_backdoor(t, cfg)}
        pluggable = resolve(t.config).protocol.pluggable_strategy  # FedAvg: Flower's strategy can be swapped
        if aggregators and pluggable and t.config.privacy.get("mechanism", "none") == "none":
            out[kind]["aggregators"] = poisoning.poisoning_experiment(t.config, t.fed, cfg)["results"]
            more = n_malicious + 1
            if n > 2 * more + 2:
                cfg2 = dataclasses.replace(cfg, n_malicious=more)
                out[kind][f"aggregators_f{more}"] = poisoning.poisoning_experiment(t.config, t.fed, cfg2)["results"]
    return out


def measure_linkage(t: Target, *, k: int = 5, ks: tuple[int, ...] = (1, 2, 5, 10)) -> dict[str, Any]:
    """Re-identification of the released metadata by a realistic attacker, against k and attacker knowledge.

    Headline rows (``pseudonymised``, ``{k}-anonymous``): the realistic
    register (partial, noisy, with every kind of knowledge in
    :data:`linkage.KNOWLEDGE`). Beside them: the positive control (the exact
    register of every patient, Sweeney's setting), the null (a guess among the
    register), ARX's prosecutor and journalist risks, and the table over k and
    knowledge.
    """
    from privmed.data.deid import LEVELS, k_anonymise, release

    reg_cfg = linkage.RegisterConfig(seed=t.config.seed)
    people = linkage.population(t.fed.patients, factor=reg_cfg.population_factor, seed=t.config.seed)
    register = linkage.public_register(people, reg_cfg)
    full = linkage.KNOWLEDGE["+ visit week"]

    def releases(kk: int):
        if kk == 1:
            raw, key = release(t.fed.patients, LEVELS[0], seed=t.config.seed)
            return raw, key, LEVELS[0]
        return k_anonymise(t.fed.patients, k=kk, seed=t.config.seed)

    table = []
    by_k = {}
    for kk in sorted(set(ks) | {1, k}):
        rel, key, g = releases(kk)
        by_k[kk] = (rel, key, g)
        for name, knows in linkage.KNOWLEDGE.items():
            rate = linkage.reidentification_rate(linkage.link_register(rel, register, knows, reg_cfg), key)
            table.append({"k": kk, "knowledge": name, **rate})

    def row(kk: int) -> dict[str, Any]:
        rel, key, g = by_k[kk]
        return {
            **linkage.reidentification_rate(linkage.link_register(rel, register, full, reg_cfg), key),
            **linkage.risk(rel, people, g),
            "generalisation": dataclasses.asdict(g),
        }

    raw, key, g0 = by_k[1]
    exact = linkage.outside_table(t.fed.patients, extra_people=4 * len(t.fed.patients), seed=t.config.seed)
    return {
        "attack": "linkage on quasi-identifiers (Sweeney 2002) with a partial, noisy register (El Emam 2013; ARX)",
        "register": {**dataclasses.asdict(reg_cfg), "rows": len(register), "population": len(people)},
        "pseudonymised": row(1),
        f"{k}-anonymous": row(k),
        "null_random_guess": 1 / max(len(register), 1),
        "positive_control": {
            "register": "every patient, exact age, date and site (Sweeney's setting)",
            **linkage.reidentification_rate(linkage.link(raw, exact, g0), key),
        },
        "by_k_and_knowledge": table,
    }


REID_COHORT_SALT = 37  # which training and test patients the re-identification attacker's cohorts hold


def measure_reidentification(
    t: Target, *, max_patients: int = 1000, epochs: int = 5, control: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Re-identification from the encodings a Privacy-Net site sends, by a fresh attacker (not the co-trained D).

    The attacker (the server, or anyone who sees encodings) learns, on the
    frozen encoder's encodings of up to ``max_patients`` training patients whose
    identities it knows (spread over the sites), a Siamese same-patient network;
    it is scored on up to ``max_patients`` held-out test patients it has never
    seen, pairs within a site (it knows which site sent an encoding). The same attacker
    on the raw images is the positive control (``control``: one already measured on
    the same cohorts, e.g. by a benchmark sweeping λ); chance is the null
    (:mod:`privmed.attacks.reidentification`).
    """
    from privmed.attacks import reidentification as reid
    from privmed.obfuscation import encode

    model = t.spec.build()
    load_arrays(model, t.predictor)
    salt = t.config.seed * 1000 + REID_COHORT_SALT
    per_site = max(2, max_patients // len(t.fed.sites))
    train, train_sites = reid.by_site([s.train for s in t.fed.sites], per_site, salt)
    test, test_sites = reid.by_site([s.test for s in t.fed.sites], per_site, salt + 100)
    start = time.perf_counter()
    encoded = reid.reidentify(
        (encode(model, train.images), train.patient_ids, train_sites),
        (encode(model, test.images), test.patient_ids, test_sites),
        epochs=epochs,
        seed=t.config.seed,
    )
    seconds = time.perf_counter() - start
    raw = control or reid.reidentify(
        (train.images, train.patient_ids, train_sites),
        (test.images, test.patient_ids, test_sites),
        epochs=epochs,
        seed=t.config.seed,
    )
    return {
        "encoded": encoded,
        "positive_control_raw": raw,
        "null": {"verification_auc": 0.5, "top1": encoded["null_top1"]},
        "attack": f"re-identification by a fresh Siamese network, {epochs} epochs on the encodings of "
        f"{encoded['n_patients']} identity-known training patients, scored on unseen test patients",
        "attacker_seconds": seconds,
    }


def measure_key_recovery(t: Target, *, max_pairs: int = 64) -> dict[str, Any]:
    """MORE key recovery against the server's view: the trainer sites' images and one-hot labels, encrypted.

    The run's own key was secret and died with it; the audit encrypts the same
    training sets under a fresh key of the same kind (the attack does not
    depend on which key). Known plaintext: the attacker knows the first
    ``P`` pixels of one training image (a colluding patient, a published
    example) and their ciphertexts; ``pairs_needed`` is the smallest P (1, 2,
    4, …) with which every image and label decrypts exactly. Ciphertext only:
    no plaintext, background pixels equal to 0 order the key's columns. Null:
    decryption under a random key; positive control: under the true key.
    """
    from privmed.attacks import more_key_recovery as kr
    from privmed.privacy import more
    from privmed.privacy.more_net import onehot

    r = resolve(t.config)
    sites = [t.fed.sites[i] for i in r.protocol.trainers(r.options, len(t.fed.sites))]
    train = ArraySet.concat([s.train for s in sites])
    images, labels = torch.from_numpy(train.images), onehot(train.labels, t.fed.n_classes)
    key = more.keygen()
    ct_images, ct_labels = more.encrypt(key, images), more.encrypt(key, labels)  # the server's view

    def scores(s: torch.Tensor) -> dict[str, float]:
        return {
            "images_exact": kr.exact_fraction(more.decrypt_with(s, ct_images), images),
            "labels_exact": kr.exact_fraction(more.decrypt_with(s, ct_labels), labels),
        }

    known_values, known_cts = images[0].reshape(-1), ct_images[0].reshape(-1, 2, 2)
    pairs, needed, first = 1, None, None
    while pairs <= min(max_pairs, len(known_values)):
        got = scores(kr.known_plaintext_key(known_values[:pairs], known_cts[:pairs]))
        first = first or got
        if got["images_exact"] == 1.0 and got["labels_exact"] == 1.0:
            needed = pairs
            break
        pairs *= 2
    return {
        "attack": "MORE key recovery (rank-one C - mI; shared eigenvectors), against the server's ciphertexts",
        "images": len(images),
        "tolerance": kr.EXACT_TOL,
        "known_plaintext": {"pairs_needed": needed, "with_one_pair": first},
        "ciphertext_only": scores(kr.ciphertext_only_key(ct_images)),
        "null_random_key": scores(more.keygen().s),
        "positive_control_true_key": scores(key.s),
    }


# Activation inversion's attacker: this many auxiliary images (held-out patients), victims of site 0 (white box: fewer)
AUX_IMAGES, VICTIM_IMAGES, WHITEBOX_VICTIMS = 256, 32, 8
VICTIM_SALT = 37  # which of site 0's training images are the victims


def measure_activation_inversion(t: Target, *, steps: int = 300, iterations: int = 300) -> dict[str, Any]:
    """Split learning's cut layer attacked from the coordinator's view (:mod:`privmed.attacks.split_inversion`).

    Victims: training images of site 0, whose activations the coordinator
    received. Attacker's auxiliary data: the sites' held-out test images
    (other patients, same distribution). Client layers: those of the
    released model (the coordinator relays them). Nulls with every score (flat
    guess, random image; shuffled pairing for dCor; chance for labels);
    positive controls: the same decoder given the images themselves (nothing
    hidden), dCor(x, x) = 1, and the label read off the gradient at the logits
    (what the server would learn if it held the head).
    """
    from privmed.attacks import split_inversion as si

    r = resolve(t.config)
    model = released_model(t)
    view = r.protocol.cut_view(model, r.options)
    train, aux_set = t.fed.sites[0].train, t.fed.pooled("test")
    rng = np.random.default_rng([t.config.seed, VICTIM_SALT])
    idx = np.sort(rng.choice(len(train), size=min(VICTIM_IMAGES, len(train)), replace=False))
    victims = torch.from_numpy(train.images[idx])
    aux = torch.from_numpy(aux_set.images[np.sort(rng.choice(len(aux_set), min(AUX_IMAGES, len(aux_set)), False))])
    with torch.no_grad():
        acts = view.encode(victims)
    start = time.perf_counter()
    decoded = si.decoder_inversion(view.encode, aux, acts, steps=steps, seed=t.config.seed)
    out: dict[str, Any] = {
        "attacker": "coordinator (or an eavesdropper without TLS): cut-layer activations + the relayed client layers",
        "activation_shape": list(acts.shape[1:]),
        "decoder": {**gi.score_reconstruction(decoded, victims, match=False), "seconds": time.perf_counter() - start},
    }
    start = time.perf_counter()
    few = victims[:WHITEBOX_VICTIMS]
    white = si.whitebox_inversion(view.encode, acts[:WHITEBOX_VICTIMS], tuple(victims.shape[1:]), iterations=iterations)
    out["whitebox"] = {**gi.score_reconstruction(white, few, match=False), "seconds": time.perf_counter() - start}
    identity = si.decoder_inversion(lambda x: x, aux, victims, steps=steps, seed=t.config.seed)
    out["positive_control"] = {
        "target": "the same decoder given the images themselves (identity cut: nothing hidden)",
        **gi.score_reconstruction(identity, victims, match=False),
    }
    out["distance_correlation"] = si.input_distance_correlation(victims, acts, seed=t.config.seed)
    y = torch.from_numpy(train.labels[idx])
    if view.labels_at_server:
        out["label_leakage"] = {"not_applicable": "the labels travel to the coordinator themselves (leakage is total)"}
    else:
        with torch.no_grad():
            h = view.server_output(victims)
        grads = si.per_example_gradients(view.head, h, y)
        logits = view.head(h).detach().requires_grad_(True)
        torch.nn.functional.cross_entropy(logits, y, reduction="sum").backward()
        out["label_leakage"] = {
            "attack": "norm of the returned gradient (Li et al. 2022), AUROC for label != 0",
            **si.norm_label_attack(grads, y.numpy()),
            "null_chance_auc": 0.5,
            "positive_control_label_from_logit_gradient": float((logits.grad.argmin(1) == y).float().mean()),
        }
    return out
