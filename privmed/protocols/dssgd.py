"""Distributed selective SGD (DSSGD): selective sharing of parameter updates.

Paper: Shokri & Shmatikov 2015, "Privacy-preserving deep learning" (CCS).
Mechanism: each participant keeps its own model. At each visit it downloads
a fraction θd of the global parameters (those updated most often) into its
local copy, trains locally, and uploads only a fraction θu of its update Δw:
the largest |Δw|, or random values among those with |Δw| ≥ τ, truncated to
[−γ, γ]. The server adds the uploaded values to the global parameters.
Optional DP on what is uploaded: selection by the sparse vector technique
(Laplace noise on threshold and queries) and Laplace noise on the released
values, sensitivity 2γ, a budget ε per upload.
Faithful: local models, θd download by update counts, θu upload (largest or
random above τ), truncation γ, additive server update, participants visited
in turn (the paper's round-robin mode). Differs: the first visit downloads
the whole global model (the paper's participants start from their own
initialisation); the DP variant is the standard (Dwork & Roth) sparse SVT
with c = θu·|w| selections, threshold noise Lap(2cΔ/ε1) and query noise
Lap(4cΔ/ε1), release noise Lap(cΔ/ε2), ε1 = 8ε/9 and ε2 = ε/9 — provably
ε-DP per upload for the whole site, composed over uploads with RDP; the SVT
ε is reported in result.json but not charged to the patient ledger.
Uploads and downloads travel as (index, value) pairs, so the engine counts
the bytes actually saved. A resumed run (``--resume``) restores the global
parameters, update counts and upload counts from the checkpoint, but the
sites' own models died with the interrupted process: each site's first
visit after the resume downloads the whole global model again. At θd = 1
that is what every visit downloads anyway (same result as an uninterrupted
run); at θd < 1 the site's other parameters become the global ones.
Options: theta_u, theta_d, selection ("largest" | "random"), tau, gamma,
dp_epsilon.
The site half (``site_mod``) runs at each site as a Flower client mod.

Evaluation as the paper does it: Shokri & Shmatikov score each
participant's own local model (their Fig. 6-8: accuracy of the participants'
models vs θu, with and without DP), not the server's global vector. The
coordinator never receives a local model; an evaluator may read them the way
it reads ground truth, at the sites, through :func:`watch_local_models`
(``benchmarks/dssgd_participants.py`` prints both).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from privmed.engine.validate import reply_problem
from privmed.errors import PrivmedError
from privmed.options import Options
from privmed.privacy.randomness import guarantee, numpy_noise_generator
from privmed.protocols.base import ProtocolContext, ProtocolOutput, ProtocolSpec, node_ids
from privmed.threat import PARTIAL, View

SELECTIONS = ("largest", "random")
# Salt of a site's selection generator, np.random.default_rng([round seed, site, SELECTION_SALT]):
# keeps its stream apart from the other draws seeded by the same round seed.
SELECTION_SALT = 17


@dataclass(frozen=True)
class DSSGDOptions(Options):
    theta_u: float = 0.1
    theta_d: float = 1.0
    selection: str = "largest"
    tau: float = 0.0
    gamma: float | None = None
    dp_epsilon: float | None = None

    def __post_init__(self) -> None:
        if not (0 < self.theta_u <= 1 and 0 < self.theta_d <= 1):
            raise PrivmedError(f"theta_u and theta_d must be in (0, 1], got {self.theta_u}, {self.theta_d}")
        if self.selection not in SELECTIONS:
            raise PrivmedError(f"unknown DSSGD selection {self.selection!r}; valid: {', '.join(SELECTIONS)}")
        if self.gamma is not None and not self.gamma > 0:
            raise PrivmedError(f"gamma (truncation) must be > 0, got {self.gamma}")
        if self.dp_epsilon is not None and (not self.dp_epsilon > 0 or self.gamma is None):
            raise PrivmedError("dp_epsilon must be > 0 and needs gamma (the truncation bounds the sensitivity, 2γ)")

    @staticmethod
    def from_record(record: dict) -> DSSGDOptions:
        """The options the coordinator put into a train message (beside the training instruction's keys)."""
        keys = set(DSSGDOptions.__dataclass_fields__)
        return DSSGDOptions(**{k: v for k, v in record.items() if k in keys})


def select(delta: np.ndarray, opts: DSSGDOptions, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values) to upload: θu of Δw, truncated to [−γ, γ], optionally through the SVT."""
    c = max(1, int(np.ceil(opts.theta_u * delta.size)))
    d = delta if opts.gamma is None else np.clip(delta, -opts.gamma, opts.gamma)
    if opts.dp_epsilon is not None:
        return svt(d, c=c, gamma=opts.gamma, tau=opts.tau, epsilon=opts.dp_epsilon, rng=rng)
    if opts.selection == "largest":
        idx = np.argpartition(-np.abs(d), c - 1)[:c]
    else:
        above = np.flatnonzero(np.abs(d) >= opts.tau)
        idx = rng.choice(above, size=min(c, above.size), replace=False) if above.size else above
    idx = np.sort(idx)
    return idx.astype(np.int64), d[idx].astype(np.float32)


def svt(
    d: np.ndarray, *, c: int, gamma: float, tau: float, epsilon: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sparse vector technique: up to c indices with noisy |Δw| above a noisy τ, released with Laplace noise."""
    sens, e1, e2 = 2 * gamma, epsilon * 8 / 9, epsilon / 9
    threshold = tau + rng.laplace(scale=2 * c * sens / e1)
    chosen: list[int] = []
    for i in rng.permutation(d.size):
        if abs(d[i]) + rng.laplace(scale=4 * c * sens / e1) >= threshold:
            chosen.append(int(i))
            if len(chosen) == c:
                break
            threshold = tau + rng.laplace(scale=2 * c * sens / e1)  # fresh threshold after each answer (Sparse)
    idx = np.sort(np.asarray(chosen, dtype=np.int64))
    vals = np.clip(d[idx] + rng.laplace(scale=c * sens / e2, size=idx.size), -gamma, gamma)
    return idx, vals.astype(np.float32)


def _flat(arrays: ArrayRecord) -> np.ndarray:
    return np.concatenate([a.numpy().ravel().astype(np.float32) for a in arrays.values()])


def _unflat(flat: np.ndarray, template: ArrayRecord) -> ArrayRecord:
    out, start = {}, 0
    for k, a in template.items():
        ref = a.numpy()
        out[k] = Array(flat[start : start + ref.size].reshape(ref.shape).astype(ref.dtype))
        start += ref.size
    return ArrayRecord(out)


def _sparse(idx: np.ndarray, val: np.ndarray) -> ArrayRecord:
    return ArrayRecord({"idx": Array(idx.astype(np.int64)), "val": Array(val.astype(np.float32))})


# Evaluator's hook (never the coordinator's): while :func:`watch_local_models` is active, each site writes its
# own model after every visit into the dict it returned, keyed by site index.
_WATCHERS: list[dict[int, ArrayRecord]] = []


@contextmanager
def watch_local_models() -> Iterator[dict[int, ArrayRecord]]:
    """Within the block, every DSSGD site's latest local model (after its visit), keyed by site index.

    Site-side and in-process only, for evaluation as the paper does it; nothing
    here travels to the coordinator.
    """
    seen: dict[int, ArrayRecord] = {}
    _WATCHERS.append(seen)
    try:
        yield seen
    finally:
        _WATCHERS.remove(seen)


@dataclass
class SiteState:
    """A participant's own model, kept between visits (the site's memory, never sent whole)."""

    template: ArrayRecord | None = None
    local: np.ndarray | None = None


def site_mod(site_index: int, options: DSSGDOptions | None = None, *, reproducible_noise: bool = False):
    """The site half of DSSGD as a Flower client mod: download θd, train, upload θu of Δw."""
    state = SiteState()

    def mod(msg: Message, ctx: Context, call_next: ClientAppCallable) -> Message:
        cfg = msg.content.config_records.get("config")
        if msg.metadata.message_type != "train" or cfg is None or "dssgd" not in cfg:
            return call_next(msg, ctx)
        opts = DSSGDOptions.from_record(dict(cfg))  # as the coordinator sent them
        if "full" in msg.content.array_records:  # first visit: the whole global model
            state.template = msg.content["full"]
            state.local = _flat(state.template)
        elif state.local is None:
            raise PrivmedError("DSSGD: a site got a partial download before the full model")
        else:
            down = msg.content["down"]
            state.local[down["idx"].numpy()] = down["val"].numpy()
        inner = Message(
            RecordDict({"arrays": _unflat(state.local, state.template), "config": cfg}),
            msg.metadata.dst_node_id,
            "train",
            group_id=msg.metadata.group_id,
        )
        reply = call_next(inner, ctx)
        if reply.has_error():
            return reply
        new = _flat(reply.content["arrays"])
        # the SVT's noise and draws come from the site's secret entropy (never the coordinator's round seed)
        private = opts.dp_epsilon is not None and not reproducible_noise
        rng = numpy_noise_generator(None) if private else selection_rng(int(cfg.get("seed", 0)), site_index)
        idx, val = select(new - state.local, opts, rng)
        state.local = new
        for watcher in _WATCHERS:
            watcher[site_index] = _unflat(new, state.template)
        return Message(RecordDict({"up": _sparse(idx, val), "metrics": reply.content["metrics"]}), reply_to=msg)

    return mod


def selection_rng(round_seed: int, site_index: int) -> np.random.Generator:
    return np.random.default_rng([round_seed, site_index, SELECTION_SALT])


def run(ctx: ProtocolContext) -> ProtocolOutput:
    opts = ctx.options
    nodes = node_ids(ctx)
    template = ctx.initial  # on a resume: the checkpointed global parameters
    glob = _flat(template)
    # update counts per parameter and uploads per site: the coordinator's state, kept by the checkpoint (ctx.state)
    counts = np.asarray(ctx.state.get("counts", np.zeros(glob.size)), dtype=np.int64)
    uploads = {node: int(ctx.state.get("uploads", {}).get(str(node), 0)) for node in nodes}
    seen: set[int] = set()  # sites holding a local model; after a resume none does (it died with the process)
    n_down = max(1, int(np.ceil(opts.theta_d * glob.size)))
    for rnd in range(ctx.start_round, ctx.settings.rounds + 1):
        for node in nodes:
            cfg = ctx.round_config(rnd)
            cfg.update({"dssgd": 1, **{k: v for k, v in opts.__dict__.items() if v is not None}})
            if node in seen:
                top = np.argsort(-counts, kind="stable")[:n_down]
                payload = {"down": _sparse(top, glob[top])}
            else:
                payload = {"full": _unflat(glob, template)}
            msg = Message(RecordDict({**payload, "config": ConfigRecord(cfg)}), node, "train", group_id=str(rnd))
            replies = list(ctx.grid.send_and_receive([msg]))
            problem = _reply_problem(replies, glob.size, declared=ctx.declared.get(node))
            if not problem:
                val = replies[0].content["up"]["val"].numpy()
                problem = ctx.norms.problem(_norm(val), fallback=_norm(glob))
            if problem:
                ctx.reject(rnd, node, problem)
                continue
            seen.add(node)
            up = replies[0].content["up"]
            idx, val = up["idx"].numpy(), up["val"].numpy()
            np.add.at(glob, idx, val)
            np.add.at(counts, idx, 1)
            uploads[node] += 1
        ctx.state.update(counts=counts, uploads={str(k): v for k, v in uploads.items()})
        ctx.evaluate_fn(rnd, _unflat(glob, template))
    return ProtocolOutput(
        _unflat(glob, template),
        measured={
            "privacy": _privacy(opts, max(uploads.values(), default=0), reproducible_noise=ctx.reproducible_noise)
        },
    )


def _reply_problem(replies: list[Message], size: int, *, declared: int | None = None) -> str | None:
    """Why a DSSGD upload cannot be added to the global parameters, or None (records, metrics, then the sparse pair)."""
    if not replies:
        return "no reply"
    problem = reply_problem(replies[0], None, records=("up", "metrics"), declared=declared)
    if problem:
        return problem
    up = replies[0].content["up"]
    if sorted(up.keys()) != ["idx", "val"]:
        return f"upload holds arrays {sorted(up.keys())}, expected ['idx', 'val']"
    idx, val = up["idx"].numpy(), up["val"].numpy()
    if idx.dtype != np.int64 or val.dtype != np.float32 or idx.ndim != 1 or idx.shape != val.shape:
        return f"upload is ({idx.dtype} {idx.shape}, {val.dtype} {val.shape}), expected int64 and float32 of one length"
    if idx.size and (idx.min() < 0 or idx.max() >= size or np.any(np.diff(idx) <= 0)):
        return "upload has out-of-range or repeated indices"
    if not np.all(np.isfinite(val)):
        return "upload holds NaN or Inf"
    return None


def _norm(values: np.ndarray) -> float:
    return float(np.linalg.norm(values.astype(np.float64)))


def _privacy(opts: DSSGDOptions, per_site: int, *, reproducible_noise: bool) -> dict:
    """``per_site``: the most uploads any one site made (ε composes over a site's own uploads)."""
    out = {"shared_fraction_up": opts.theta_u, "shared_fraction_down": opts.theta_d, "selection": opts.selection}
    if opts.dp_epsilon is None:
        return out
    from privmed.privacy.accounting import epsilon_from_rdp, rdp_pure

    delta = 1e-5
    out.update(
        {
            "mechanism": "dssgd-svt",
            "epsilon_per_upload": opts.dp_epsilon,
            "unit": "site",
            "delta": delta,
            "epsilon": min(
                per_site * opts.dp_epsilon,
                epsilon_from_rdp(rdp_pure(epsilon=opts.dp_epsilon, releases=per_site), delta=delta),
            ),
            "composition": "per site over its uploads: min(basic, RDP of pure-DP releases)",
            "noise_source": "the run seed (--reproducible-noise)"
            if reproducible_noise
            else "secret entropy of each site",
            "guarantee": guarantee(
                reproducible=reproducible_noise, statement="ε-DP per upload at site level (sparse vector technique)"
            ),
        }
    )
    return out


def probe_upload(
    model: torch.nn.Module,
    sent: dict,
    received: dict,
    options: DSSGDOptions,
    *,
    seed: int,
    site: int,
    reproducible_noise: bool = False,
) -> tuple[dict, list[torch.Tensor]]:
    """What a DSSGD site uploads of ``received - sent`` (its ``select``): (sent + sparse update, masks per parameter).

    The inversion probe's view: the attacker sees only the θu selection.
    """
    names = [n for n, _ in model.named_parameters()]
    delta = np.concatenate([(received[n].float() - sent[n].float()).numpy().ravel() for n in names])
    private = options.dp_epsilon is not None and not reproducible_noise  # the SVT draws from the site's secret
    idx, val = select(delta, options, numpy_noise_generator(None) if private else selection_rng(seed, site))
    sparse, seen = np.zeros_like(delta), np.zeros(delta.size, dtype=bool)
    sparse[idx], seen[idx] = val, True
    out, masks, start = dict(sent), [], 0
    for n in names:
        size = sent[n].numel()
        out[n] = sent[n].float() + torch.from_numpy(sparse[start : start + size]).reshape(sent[n].shape)
        masks.append(torch.from_numpy(seen[start : start + size]).reshape(sent[n].shape))
        start += size
    return out, masks


SPEC = ProtocolSpec(
    name="dssgd",
    technique="shokri2015-dssgd",
    run=run,
    views={
        "coordinator": View(PARTIAL, "a fraction theta_u of each site's update (index, value) at every visit"),
        "another site": View(
            PARTIAL, "the other sites' uploads since its last visit, in the global parameters it gets"
        ),
        "eavesdropper": View(PARTIAL, "each site's uploaded fraction of its update, in the clear without TLS"),
    },
    active_coordinator="the SVT's ε (noise added at the sites); nothing of the global model's integrity",
    schedule="sequential",
    options=DSSGDOptions,
    site_mod=site_mod,
    probe_upload=probe_upload,
)
