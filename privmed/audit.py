"""``privmed audit runs/<name>``: run the attacks that apply to a finished run, write audit.json.

The audit rebuilds the run from what it saved (``result.json``'s config and
``model.pt``): the same federation (same data seed), the same model, the same
privacy mechanism. Which attacks apply, and against whom, follows from the
protocol's threat matrix (:mod:`privmed.threat`: what the coordinator,
another site, an eavesdropper and a model user each see):

- gradient inversion attacks each party that sees an update — one site's,
  a fraction of one site's (DSSGD) or the aggregate of all sites' (the
  SecAgg+ coordinator; every site under FedAvg or HE, which sees the global
  model) — and says why for the others (ciphertext, raw data, nothing);
- membership inference, model inversion and adversarial examples attack the
  released final model (any protocol; classification only);
- poisoning re-runs the protocol with malicious sites (not ``single``);
- linkage attacks the data set's released metadata;
- re-identification attacks the encodings a protocol sends instead of the
  images (Privacy-Net): a fresh Siamese attacker on the frozen encoder.
- key recovery (MORE) attacks the server's ciphertexts, for the protocols
  that declare it (``ProtocolSpec.extra_attacks``: ``more``).
- activation inversion attacks split learning's cut layer from the
  coordinator's view: images decoded from the activations (learned decoder,
  white-box optimisation), their distance correlation with the inputs, and
  the labels from the U-shape's returned gradients (norm attack).

``audit.json`` is written atomically after every attack has finished; on any
failure nothing is written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from privmed.errors import PrivmedError, unknown_name
from privmed.files import private_writer
from privmed.threat import INVERTIBLE, not_invertible

ATTACKS = (
    "membership",
    "lira",
    "inversion",
    "dlg",
    "model-inversion",
    "adversarial",
    "poisoning",
    "linkage",
    "key-recovery",
    "activation-inversion",
    "reidentification",
)
# attacks on one scheme, run only against protocols whose spec opts in (``ProtocolSpec.extra_attacks``)
OPT_IN_ATTACKS = {
    "key-recovery": "the server sees no MORE ciphertexts (only protocol more trains on them)",
    "reidentification": "the protocol sends no encoding of the images to re-identify patients from",
}
MODEL_ATTACKS = ("membership", "lira", "model-inversion", "adversarial")


def not_applicable(
    attack: str,
    *,
    protocol: str,
    task: str,
    privacy: dict[str, Any],
    has_metadata: bool = True,
    dataset: str = "phantom",
) -> str | None:
    """Why ``attack`` does not apply to a run, or None if it does (the protocol's spec declares its own reasons)."""
    from privmed.protocols.registry import get_protocol

    # ``dataset`` is kept for callers: LiRA's attacker cohort is held-out patients of the run's own sites, so it
    # applies to any data set (it no longer needs a phantom generator)
    if attack == "linkage" and not has_metadata:
        return "the data set carries no patient metadata (age, sex, dates) to link"
    spec = get_protocol(protocol)
    declared = spec.not_applicable
    if attack in OPT_IN_ATTACKS and attack not in spec.extra_attacks:
        return OPT_IN_ATTACKS[attack]
    if attack == "reidentification":  # opted in: it attacks the encodings, whatever the task
        return None
    if attack in ("inversion", "dlg"):  # needs a party that sees an update (privmed.threat)
        views = spec.all_views()
        if not any(v.kind in INVERTIBLE for v in views.values()):
            return "no party sees an update: " + "; ".join(not_invertible(p, v) for p, v in views.items())
    if attack == "activation-inversion" and spec.cut_view is None:
        return "no party receives cut-layer activations (only split learning sends them)"
    if task != "classification" and attack != "linkage":
        return f"privmed's {attack} attack targets classifiers; this run is {task}"
    return declared.get(attack)


@dataclass
class AuditResult:
    run: str
    protocol: str
    mechanism: str
    seed: int
    coordinator_sees: str
    threat: dict[str, Any] = field(default_factory=dict)  # the matrix the audit attacked (privmed.threat)
    results: dict[str, Any] = field(default_factory=dict)
    not_applicable: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def leakage(self) -> dict[str, float]:
        """The headline privacy numbers (bench's Privacy column)."""
        r, out = self.results, {}
        if "membership" in r:
            out["MIA AUC"] = r["membership"]["image"]["auc"]
            out["MIA AUC (patient)"] = r["membership"]["patient"]["auc"]
        if "lira" in r:
            out["LiRA AUC"] = r["lira"]["image"]["auc"]
            out["LiRA TPR at 1% FPR"] = r["lira"]["image"]["tpr_at_1pct_fpr"]
            out["LiRA AUC, positive control"] = r["lira"]["positive_control"]["lira"]["auc"]
        if "membership" in r or "lira" in r:
            out["MIA AUC, null (chance)"] = 0.5
        if "inversion" in r:  # per party that sees an update; the headline is the most exposed party's
            psnr = {
                party: next(iter(v["per_batch_size"].values()))["psnr"]
                for party, v in r["inversion"]["per_party"].items()
                if "per_batch_size" in v
            }
            out["inversion PSNR dB"] = max(psnr.values())
            out.update({f"inversion PSNR dB, {party}": value for party, value in psnr.items()})
            first = next(v for v in r["inversion"]["per_party"].values() if "per_batch_size" in v)
            row = next(iter(first["per_batch_size"].values()))
            out["inversion PSNR dB, null (flat guess)"] = row["psnr_flat_guess"]
            out["inversion PSNR dB, null (random image)"] = row["psnr_random_image"]
            out["inversion PSNR dB, positive control"] = r["inversion"]["positive_control"]["psnr"]
        if "activation-inversion" in r:
            a = r["activation-inversion"]
            out["activation inversion PSNR dB (decoder)"] = a["decoder"]["psnr"]
            out["activation inversion SSIM (decoder)"] = a["decoder"]["ssim"]
            out["activation inversion PSNR dB (white box)"] = a["whitebox"]["psnr"]
            out["activation inversion PSNR dB, null (flat guess)"] = a["decoder"]["psnr_flat_guess"]
            out["activation inversion PSNR dB, null (random image)"] = a["decoder"]["psnr_random_image"]
            out["activation inversion PSNR dB, positive control"] = a["positive_control"]["psnr"]
            out["dCor(input, activations)"] = a["distance_correlation"]["dcor"]
            out["dCor, null (shuffled pairs)"] = a["distance_correlation"]["dcor_null_shuffled_pairs"]
            if "auc" in a["label_leakage"]:
                out["label leakage AUC (norm attack)"] = a["label_leakage"]["auc"]
        if "model-inversion" in r:
            out["model inversion corr. to class mean"] = r["model-inversion"]["corr_own_class_mean"]
            out["model inversion own-other gap beyond untrained null"] = r["model-inversion"]["gap_beyond_null"]
        if "key-recovery" in r:
            kr = r["key-recovery"]
            out["MORE images decrypted, 1 known pixel"] = kr["known_plaintext"]["with_one_pair"]["images_exact"]
            out["MORE images decrypted, ciphertext only"] = kr["ciphertext_only"]["images_exact"]
            out["MORE images decrypted, null (random key)"] = kr["null_random_key"]["images_exact"]
            out["MORE images decrypted, positive control (true key)"] = kr["positive_control_true_key"]["images_exact"]
        if "linkage" in r:
            for release, v in r["linkage"].items():
                if isinstance(v, dict) and release != "positive_control" and "reidentified" in v:
                    out[f"re-identified ({release})"] = v["reidentified"]
            out["re-identified, positive control (exact full register)"] = r["linkage"]["positive_control"][
                "reidentified"
            ]
            out["re-identified, null (random guess)"] = r["linkage"]["null_random_guess"]
        if "reidentification" in r:
            reid = r["reidentification"]
            out["re-identification top-1 (fresh attacker, encodings)"] = reid["encoded"]["top1"]
            out["re-identification verification AUC (encodings)"] = reid["encoded"]["verification_auc"]
            out["re-identification top-1, positive control (raw images)"] = reid["positive_control_raw"]["top1"]
            out["re-identification verification AUC, positive control (raw images)"] = reid["positive_control_raw"][
                "verification_auc"
            ]
            out["re-identification top-1, null (chance)"] = reid["null"]["top1"]
        return out

    def security(self) -> dict[str, float]:
        """The headline robustness numbers (bench's Security column)."""
        r, out = self.results, {}
        if "adversarial" in r:
            pgd = r["adversarial"]["pgd"]
            out["PGD acc ε=8/255"] = pgd[max(pgd, key=lambda k: float(k.split("=")[1]))]
        if "poisoning" in r and "backdoor" in r["poisoning"]:
            bd = r["poisoning"]["backdoor"]["as_run"]
            out["backdoor success"] = bd["attack_success"]
            out["target rate without trigger"] = bd["without_trigger"]
        return out


def load_target(run_dir: Path):
    """The run rebuilt from ``result.json`` and ``model.pt`` (clear errors when either is missing)."""
    from privmed.attacks.harness import Target
    from privmed.config import from_dict
    from privmed.engine.result import load_predictor
    from privmed.engine.session import build_federation, model_spec

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PrivmedError(
            f"run directory {run_dir} does not exist; give a directory written by `privmed train` (runs/<name>)"
        )
    for name in ("result.json", "model.pt"):
        if not (run_dir / name).is_file():
            raise PrivmedError(
                f"run directory {run_dir} is incomplete: no {name} (the run did not finish); re-run `privmed train`"
            )
    try:
        result = json.loads((run_dir / "result.json").read_text())
        config = from_dict(result["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise PrivmedError(
            f"{run_dir / 'result.json'} is not a privmed result ({exc}); re-run `privmed train`"
        ) from None
    fed = build_federation(config.data, config.seed)
    target = Target(
        config,
        fed,
        model_spec(config, fed),
        load_predictor(run_dir),
    )
    return target, result


def run_attacks(
    target,
    result: dict[str, Any],
    *,
    attacks: tuple[str, ...] | None = None,
    n_shadows: int = 8,
    batch_sizes: tuple[int, ...] = (1, 4),
    inversion_iterations: int | None = None,
    run_name: str = "",
    cheap: bool = False,
) -> AuditResult:
    """Run ``attacks`` (None: every attack that applies) against an in-memory target.

    ``cheap`` (the bench's per-row audit): PGD at one ε on 100 images, and the
    backdoor only, through the run's own protocol (no aggregator comparison).
    """
    from privmed.attacks import harness as h

    explicit = attacks is not None
    for a in attacks or ():
        if a not in ATTACKS:
            raise unknown_name("attack", a, ATTACKS)
    from privmed.attacks.membership import LiraConfig

    LiraConfig(n_shadows=n_shadows)  # refuse a bad shadow count before any attack runs
    cfg = target.config
    privacy = result.get("privacy", {})
    audit = AuditResult(
        run=run_name or cfg.run_name,
        protocol=cfg.protocol,
        mechanism=str(privacy.get("mechanism", "none")),
        seed=cfg.seed,
        coordinator_sees=str(privacy.get("coordinator_sees", "")),
        threat=privacy.get("threat", {}),
    )
    measures: dict[str, Callable[[], dict[str, Any]]] = {
        "membership": lambda: h.measure_loss_threshold(target),
        "lira": lambda: h.measure_lira(target, n_shadows=n_shadows),
        "inversion": lambda: h.measure_inversion(target, batch_sizes=batch_sizes, iterations=inversion_iterations),
        "dlg": lambda: h.measure_inversion(target, batch_sizes=(1,), method="dlg", iterations=inversion_iterations),
        "model-inversion": lambda: h.measure_model_inversion(target),
        "adversarial": lambda: h.measure_adversarial(
            target, **({"eps": (0.0, 8 / 255), "max_images": 100} if cheap else {})
        ),
        "poisoning": lambda: h.measure_poisoning(target, kinds=("backdoor",) if cheap else None, aggregators=not cheap),
        "linkage": lambda: h.measure_linkage(target),
        "reidentification": lambda: h.measure_reidentification(target, epochs=5 if cheap else 10),
        "key-recovery": lambda: h.measure_key_recovery(target),
        "activation-inversion": lambda: h.measure_activation_inversion(
            target, **({"steps": 200, "iterations": 200} if cheap else {})
        ),
    }
    for name in ATTACKS if attacks is None else attacks:  # () after bench_audit's filter: nothing applies
        why = not_applicable(
            name,
            protocol=cfg.protocol,
            task=cfg.task,
            privacy=privacy,
            has_metadata=bool(target.fed.patients),
            dataset=cfg.data.dataset,
        )
        if why:
            if explicit:
                raise PrivmedError(f"attack {name!r} does not apply to run {audit.run}: {why}")
            audit.not_applicable[name] = why
            continue
        start = time.perf_counter()
        audit.results[name] = measures[name]()
        audit.seconds[name] = time.perf_counter() - start
    return audit


def audit_run(
    run_dir: str | Path, *, attacks: tuple[str, ...] | None = None, n_shadows: int = 8
) -> tuple[AuditResult, Path]:
    """Audit a run directory and write ``audit.json`` beside ``result.json`` (atomically)."""
    from privmed.run import set_threads

    set_threads()
    run_dir = Path(run_dir)
    target, result = load_target(run_dir)
    audit = run_attacks(target, result, attacks=attacks, n_shadows=n_shadows, run_name=run_dir.name)
    path = run_dir / "audit.json"
    with private_writer(path, "w") as fh:
        fh.write(json.dumps(audit.to_dict(), indent=2, default=float))
    return audit, path


BENCH_ATTACKS = (
    "membership",
    "inversion",
    "adversarial",
    "poisoning",
    "key-recovery",
    "activation-inversion",
    "reidentification",
)


def bench_audit(config, fed, result, attacks: tuple[str, ...] = BENCH_ATTACKS) -> AuditResult:
    """The bench's per-row audit (kept cheap: loss-threshold MIA, one 1-image IG, PGD at 8/255, the backdoor as run)."""
    from privmed.attacks.harness import Target
    from privmed.engine.session import model_spec

    target = Target(config, fed, model_spec(config, fed), result.predictor)
    attacks = tuple(
        a for a in attacks if not not_applicable(a, protocol=config.protocol, task=config.task, privacy=result.privacy)
    )
    return run_attacks(
        target, result.to_dict(), attacks=attacks, batch_sizes=(1,), inversion_iterations=100, cheap=True
    )
