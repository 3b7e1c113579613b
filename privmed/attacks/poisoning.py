"""Poisoning by k malicious sites: label flipping and a trigger-patch backdoor.

Papers: label flipping as in Biggio, Nelson, Laskov 2012 / Tolpegin et al.
2020 ("Data Poisoning Attacks Against Federated Learning Systems");
the backdoor of Chen, Liu, Li, Lu, Song 2017, "Targeted Backdoor Attacks on
Deep Learning Systems Using Data Poisoning" (a fixed pattern stamped on
training images relabelled to the target class; at test time the pattern
alone flips predictions). Threat model: k sites run the real protocol with
poisoned local data (they train honestly on it); the coordinator follows the
protocol. Defences are Flower's own robust aggregators — FedMedian (Yin et
al. 2018), FedTrimmedAvg (Yin et al. 2018), Krum and MultiKrum (Blanchard et
al. 2017) — and an update-norm bound (Sun et al. 2019, "Can You Really
Backdoor Federated Learning?"), here Flower's server-side fixed clipping
wrapper with zero noise. The harness reports clean test accuracy and the
attack success rate (backdoor: triggered non-target test images classified
as the target; label flip: test images classified as their flipped label),
each with a Wilson 95 % interval over the test images, beside its baseline
(backdoor: the same images without the trigger; label flip: the rate of the
same run without malicious sites, which the experiment runs as ``f = 0``).

Positive control: model replacement (Bagdasaryan, Veit, Hua, Estrin,
Shmatikov 2020, "How To Backdoor Federated Learning"): a malicious site
scales its update by ``boost`` (their γ ≈ n/η) so that it survives
averaging, as a client mod at the malicious sites (:func:`model_replacement_mod`),
so FedAvg can be captured and the robust aggregators and the norm bound are
tested against the attack they were designed for. (The audit's "as run"
re-run poisons data only.)

Validity: Krum needs n > 2f + 2 (Blanchard et al. 2017, Lemma/Prop. 1) and
is refused otherwise; the trimmed mean cuts a fraction β ≥ f/n at each end
(Yin et al. 2018), here β = max(f, 1)/n. ``benchmarks/poisoning_robust.py``
runs 10 sites with f = 1 and 2, both attacks, every aggregator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
)

from privmed.config import RunConfig
from privmed.data.base import ArraySet, Federation
from privmed.errors import PrivmedError, unknown_name

KINDS = ("backdoor", "label-flip")
AGGREGATORS = ("fedavg", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "norm-bound")


# Seed salt of which sites are malicious and which images are poisoned: apart from other draws of the same seed
MALICIOUS_SALT = 23


@dataclass(frozen=True)
class PoisonConfig:
    kind: str = "backdoor"
    n_malicious: int = 1
    target_class: int = 1  # backdoor target
    fraction: float = 0.5  # of a malicious site's training images poisoned
    patch: int = 4  # trigger: a patch x patch checkerboard in the bottom-right corner
    seed: int = 0
    boost: float = 1.0  # model replacement: a malicious site scales its update by this (1: plain data poisoning)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise unknown_name("poisoning kind", self.kind, KINDS)
        if self.n_malicious < 0 or not 0 < self.fraction <= 1 or self.patch < 1 or not self.boost >= 1:
            raise PrivmedError("poisoning needs n_malicious >= 0, 0 < fraction <= 1, patch >= 1 and boost >= 1")


def add_trigger(images: np.ndarray, patch: int) -> np.ndarray:
    """Stamp a ``patch`` x ``patch`` black-and-white checkerboard one pixel in from the bottom-right corner."""
    out = images.copy()
    board = (np.indices((patch, patch)).sum(0) % 2).astype(images.dtype)
    out[..., -patch - 1 : -1, -patch - 1 : -1] = board
    return out


def poison_arrays(data: ArraySet, cfg: PoisonConfig, n_classes: int, rng: np.random.Generator) -> ArraySet:
    """A malicious site's training set: ``fraction`` of its images triggered+relabelled, or label-flipped."""
    idx = rng.choice(len(data), size=max(1, int(round(cfg.fraction * len(data)))), replace=False)
    images, labels = data.images.copy(), data.labels.copy()
    if cfg.kind == "backdoor":
        images[idx] = add_trigger(images[idx], cfg.patch)
        labels[idx] = cfg.target_class
    else:
        labels[idx] = (labels[idx] + 1) % n_classes
    return dataclasses.replace(data, images=images, labels=labels)


def poison_federation(fed: Federation, cfg: PoisonConfig) -> tuple[Federation, list[str]]:
    """The federation with ``n_malicious`` sites (chosen by seed) holding poisoned training data."""
    if cfg.n_malicious > len(fed.sites):
        raise PrivmedError(f"{cfg.n_malicious} malicious sites requested but the federation has {len(fed.sites)}")
    if cfg.kind == "backdoor" and not 0 <= cfg.target_class < fed.n_classes:
        raise PrivmedError(f"backdoor target class {cfg.target_class} is not one of the {fed.n_classes} classes")
    rng = np.random.default_rng([cfg.seed, MALICIOUS_SALT])
    bad = set(rng.choice(len(fed.sites), size=cfg.n_malicious, replace=False).tolist())
    sites = tuple(
        dataclasses.replace(s, train=poison_arrays(s.train, cfg, fed.n_classes, rng)) if i in bad else s
        for i, s in enumerate(fed.sites)
    )
    return dataclasses.replace(fed, sites=sites), [fed.sites[i].name for i in sorted(bad)]


def wilson(successes: int, n: int, z: float = 1.96) -> list[float]:
    """Wilson score 95 % interval of a binomial rate (Wilson 1927)."""
    if n == 0:
        return [float("nan"), float("nan")]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [float(centre - half), float(centre + half)]


def attack_success(proba_fn, test: ArraySet, cfg: PoisonConfig, n_classes: int) -> dict[str, float]:
    """Harness side: attack success on held-out images, and the same rate without the attack (its baseline).

    Backdoor: triggered non-target images classified as the target (baseline:
    the same images untriggered). Label flip: test images classified as their
    flipped label (baseline: chance, 1/K).
    """
    if cfg.kind == "backdoor":
        clean = test.subset(np.flatnonzero(test.labels != cfg.target_class))
        if not len(clean):
            return {"attack_success": float("nan"), "without_trigger": float("nan")}
        triggered = dataclasses.replace(clean, images=add_trigger(clean.images, cfg.patch))
        hit = int((proba_fn(triggered).argmax(1) == cfg.target_class).sum())
        return {
            "attack_success": hit / len(clean),
            "attack_success_ci95": wilson(hit, len(clean)),
            "without_trigger": float((proba_fn(clean).argmax(1) == cfg.target_class).mean()),
            "n": len(clean),
        }
    hit = int((proba_fn(test).argmax(1) == (test.labels + 1) % n_classes).sum())
    return {
        "attack_success": hit / len(test),
        "attack_success_ci95": wilson(hit, len(test)),
        "chance": 1.0 / n_classes,
        "n": len(test),
    }


def make_aggregator(name: str, *, n_sites: int, n_malicious: int, clip_norm: float = 1.0) -> Strategy:
    """A Flower strategy by name; Krum assumes the number of malicious sites is known (its paper's f).

    Krum and MultiKrum are refused outside their condition n > 2f + 2.
    """
    if name in ("krum", "multikrum") and not n_sites > 2 * n_malicious + 2:
        raise PrivmedError(
            f"{name} tolerates f malicious sites only when n > 2f + 2 (Blanchard et al. 2017); "
            f"n = {n_sites}, f = {n_malicious}: use at least {2 * n_malicious + 3} sites"
        )
    common = {
        "fraction_train": 1.0,
        "fraction_evaluate": 0.0,
        "min_train_nodes": n_sites,
        "min_available_nodes": n_sites,
    }
    builders: dict[str, Callable[[], Strategy]] = {
        "fedavg": lambda: FedAvg(**common),
        "fedmedian": lambda: FedMedian(**common),
        "fedtrimmedavg": lambda: FedTrimmedAvg(**common, beta=min(max(n_malicious, 1) / n_sites, 0.49)),
        "krum": lambda: Krum(**common, num_malicious_nodes=n_malicious),
        "multikrum": lambda: MultiKrum(
            **common, num_malicious_nodes=n_malicious, num_nodes_to_select=max(1, n_sites - n_malicious)
        ),
        "norm-bound": lambda: DifferentialPrivacyServerSideFixedClipping(
            FedAvg(**common), noise_multiplier=0.0, clipping_norm=clip_norm, num_sampled_clients=n_sites
        ),
    }
    if name not in builders:
        raise unknown_name("aggregator", name, AGGREGATORS)
    return builders[name]()


def model_replacement_mod(boost: float):
    """A malicious site's Flower client mod: send ``w_global + boost * (w_trained - w_global)`` (Bagdasaryan 2020)."""
    from flwr.app import Context, Message
    from flwr.clientapp.typing import ClientAppCallable

    def mod(msg: Message, ctx: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, ctx)
        if msg.metadata.message_type != "train" or reply.has_error() or "arrays" not in msg.content.array_records:
            return reply
        glob = msg.content["arrays"].to_torch_state_dict()
        sent = reply.content["arrays"].to_torch_state_dict()
        reply.content["arrays"] = ArrayRecord({k: glob[k] + boost * (v - glob[k]) for k, v in sent.items()})
        return reply

    return mod


def malicious_mods(fed: Federation, bad: list[str], cfg: PoisonConfig) -> dict[int, list]:
    """Client mods per site index: model replacement at the malicious sites when ``cfg.boost > 1``."""
    if cfg.boost <= 1:
        return {}
    return {i: [model_replacement_mod(cfg.boost)] for i, s in enumerate(fed.sites) if s.name in bad}


def train_fedavg(
    config: RunConfig, fed: Federation, strategy: Strategy, *, site_mods: dict[int, list] | None = None
) -> ArrayRecord:
    """Flower's round loop (privmed's FedAvg protocol) on the in-process Grid with ``strategy`` aggregating."""
    from privmed.engine.session import assemble
    from privmed.protocols import fedavg

    session = assemble(
        dataclasses.replace(config, protocol=fedavg.SPEC.name, options={}, privacy={}), fed=fed, site_mods=site_mods
    )
    return fedavg.run(session.ctx, strategy=strategy).predictor


def poisoning_experiment(
    config: RunConfig,
    fed: Federation,
    cfg: PoisonConfig,
    *,
    aggregators: tuple[str, ...] = AGGREGATORS,
    clip_norm: float = 1.0,
) -> dict[str, dict[str, float]]:
    """Clean accuracy and attack success of FedAvg under each aggregator, with the malicious sites poisoned."""
    from privmed.engine.result import predict
    from privmed.engine.session import model_spec

    poisoned, bad = poison_federation(fed, cfg)
    spec = model_spec(config, fed)
    test = fed.pooled("test")
    out: dict[str, dict] = {}
    for name in aggregators:
        try:
            strategy = make_aggregator(name, n_sites=len(fed.sites), n_malicious=cfg.n_malicious, clip_norm=clip_norm)
        except PrivmedError as exc:  # outside the aggregator's validity condition: say so, do not measure
            out[name] = {"not_applicable": str(exc)}
            continue
        weights = train_fedavg(config, poisoned, strategy, site_mods=malicious_mods(fed, bad, cfg))
        proba = predict(spec, weights, test)
        out[name] = {
            "clean_accuracy": float((proba.argmax(1) == test.labels).mean()),
            **attack_success(lambda d, w=weights: predict(spec, w, d), test, cfg, fed.n_classes),
        }
    return {"malicious_sites": bad, "kind": cfg.kind, "results": out}
