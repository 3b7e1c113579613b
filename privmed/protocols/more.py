"""MORE-encrypted training: the hospitals encrypt their images, the server trains on ciphertexts.

Paper: Vizitiu et al. 2019, "Towards privacy-preserving deep learning based
medical imaging applications" (MeMeA; extended in Comput Math Methods Med
2020:3910250), with the MORE scheme of Kipnis & Hibshoosh 2012
(:mod:`privmed.privacy.more`). The data owner encrypts every image and its
one-hot label; a server trains a CNN with polynomial activations and a
squared-error loss entirely on the ciphertexts (:mod:`privmed.privacy.more_net`);
the weights it updates become ciphertexts; only the key holder decrypts the
model or its predictions.

Faithful: encrypted images *and* one-hot labels; training (forward pass,
loss, gradients, SGD with momentum) only on ciphertexts, at the server,
which never holds the key; the server starts from public weights ``w·I``;
decryption of the final weights by the key holder. Differs: Vizitiu had one
data owner; here every hospital of the run encrypts under **one key shared
by the hospitals** (a consortium key generated among them, in-process by the
``more`` mechanism on the sites' side) and uploads its ciphertexts once, at
set-up; the server pools them. Each hospital draws its own r's (secret-seeded).
Network: privmed's ``poly-cnn`` (2 conv blocks with ``0.5x + 0.25x²``
activations, average pooling, a linear head), not Vizitiu's exact network.
A round is ``local_epochs`` epochs over the pooled ciphertexts, with the
protocol's own step size and momentum (options ``lr``, ``momentum``: SGD, since
Adam's square roots and divisions are not ring operations).

Threat model: the server (coordinator) and an eavesdropper see ciphertexts
only — of every image, every label and the model. MORE is **not**
semantically secure: ``C − m·I`` has rank one, so one known pixel value and
its ciphertext give an equivalent key, and all ciphertexts share S's
eigenvectors, so the ciphertexts alone give it up to the order of its
columns (background pixels equal to 0 fix that order). The audit's
``key-recovery`` attack (:mod:`privmed.attacks.more_key_recovery`) does both
against the server's view. Every hospital holds the key: a curious hospital
that obtains another's ciphertexts decrypts them. A resumed run
(``--resume``) sets up a new key, re-uploads, and starts from the
checkpointed (decrypted) model as from public weights (momentum restarts).

Measured in the result: ciphertext and plaintext bytes of the upload
(expansion 4×: four float32 entries per value), seconds per epoch on
ciphertexts, and the same network's seconds per epoch on plaintext of the
same shape, timed in the same run (the server times it on dummy tensors: it
has no plaintext), with their ratio.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from privmed.engine.validate import by_destination
from privmed.errors import PrivmedError
from privmed.models import PolyCNN
from privmed.options import Options
from privmed.privacy import more
from privmed.privacy import more_net as mn
from privmed.privacy.base import Mechanism, Plan
from privmed.privacy.randomness import numpy_noise_generator
from privmed.privacy.sealed import from_bytes, seal_predictor, sealed_record, to_bytes
from privmed.protocols.base import ProtocolContext, ProtocolOutput, ProtocolSpec, node_ids
from privmed.threat import CIPHERTEXT, MODEL, View

UPLOAD = "more-upload"  # a train message carrying this record asks a site for its encrypted training set
SHUFFLE_SALT = 41  # the server's mini-batch order (run seed, not privacy randomness)


@dataclass(frozen=True)
class MoreOptions(Options):
    # SGD step size on ciphertexts (squared error summed over classes, mean over the batch); 0.1 learnt faster but
    # diverged to NaN after ~20 epochs at seed 0 (in plaintext as on ciphertexts: polynomial activations explode)
    lr: float = 0.05
    momentum: float = 0.9

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise PrivmedError(f"more: lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise PrivmedError(f"more: momentum must be in [0, 1), got {self.momentum}")


# ----------------------------------------------------------------------------- the sites' half: key and encryption


def upload_mod(key: more.MoreKey, images: np.ndarray, labels: np.ndarray, n_classes: int, *, site: str):
    """Answer the server's upload request with the site's training set, encrypted (fresh secret r's)."""

    def mod(msg: Message, context: Context, call_next) -> Message:
        if msg.metadata.message_type != "train" or UPLOAD not in msg.content.config_records:
            return call_next(msg, context)
        rng = numpy_noise_generator(None)  # this site's r's: secret entropy of the site
        t0 = time.perf_counter()
        ct_images = more.encrypt(key, torch.from_numpy(images), rng)
        ct_labels = more.encrypt(key, mn.onehot(labels, n_classes), rng)
        seconds = time.perf_counter() - t0
        data = ArrayRecord({"images": Array(ct_images.numpy()), "labels": Array(ct_labels.numpy())})
        info = ConfigRecord({"key-id": key.key_id, "site": site})
        metrics = MetricRecord({"num-examples": len(images), "more-encrypt-s": seconds})
        return Message(RecordDict({"more-data": data, "more": info, "metrics": metrics}), reply_to=msg)

    return mod


class MoreMechanism(Mechanism):
    """The hospitals' MORE key (one, shared among them) and the mod that encrypts each site's training set."""

    name = "more"
    protocols = ("more",)
    purpose = "encrypts the sites' training data with MORE"
    encrypts = True
    threat = (
        "one MORE key shared by the hospitals; MORE is not semantically secure: one known pixel (or the ciphertexts "
        "alone) gives the key"
    )

    def __init__(self, options: dict[str, Any]) -> None:
        if set(options) - {"max_cond"}:
            raise PrivmedError(f"unknown more parameter {sorted(set(options) - {'max_cond'})[0]!r}; valid: max_cond")
        self.max_cond = float(options.get("max_cond", more.MAX_COND))
        if not self.max_cond > 1:
            raise PrivmedError(f"more: max_cond (the key's condition number bound) must be > 1, got {self.max_cond}")
        self.key: more.MoreKey | None = None
        self._plan: Plan | None = None

    def check(self, plan: Plan) -> None:
        if plan.config.model != "poly-cnn":
            raise PrivmedError(
                f"more trains on MORE ciphertexts, which allow only polynomial networks; use --model poly-cnn, "
                f"not {plan.config.model}"
            )
        self._plan = plan
        self.key = more.keygen(max_cond=self.max_cond)  # secret-seeded, on the sites' side; never sent

    def client_mods(self, site_index: int) -> list:
        if self.key is None or self._plan is None:
            raise PrivmedError("more has no key yet: call check(plan) before building the sites")
        name, train = self._plan.sites[site_index]
        return [upload_mod(self.key, train.images, train.labels, self._plan.model.n_classes, site=name)]

    def reveal(self, predictor):
        """The key holder decrypts the model the server trained."""
        rec = sealed_record(predictor)
        if rec is None:
            return predictor
        if str(rec["key-id"]) != self.key.key_id:
            raise PrivmedError("the model is encrypted under another MORE key (a resumed run's old key?)")
        sealed = from_bytes(bytes(rec["weights"]))
        return ArrayRecord(
            {
                k: Array(more.decrypt(self.key, torch.from_numpy(a.numpy())).to(torch.float32).numpy())
                for k, a in sealed.items()
            }
        )

    def report(self) -> dict[str, Any]:
        return {
            "epsilon": None,
            "delta": None,
            "unit": None,
            "encryption": "MORE (Kipnis & Hibshoosh 2012), 2x2 float key",
            "semantically_secure": False,
            "coordinator_holds": "ciphertexts only (no key)",
            "max_cond": self.max_cond,
        }


# ----------------------------------------------------------------------------- the server's half


def collect(ctx: ProtocolContext, nodes: list[int]) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Ask every site for its encrypted training set; check and pool the ciphertexts."""
    msgs = [Message(RecordDict({UPLOAD: ConfigRecord()}), n, "train", group_id="0") for n in nodes]
    images, labels, key_ids, enc_s = [], [], set(), 0.0
    for node, r in sorted(by_destination(msgs, ctx.grid.send_and_receive(msgs)).items()):
        problem = _upload_problem(r)
        if problem:
            ctx.reject(0, node, problem)
            continue
        data = r.content["more-data"]
        images.append(torch.from_numpy(data["images"].numpy()))
        labels.append(torch.from_numpy(data["labels"].numpy()))
        key_ids.add(str(r.content["more"]["key-id"]))
        enc_s += float(r.content["metrics"]["more-encrypt-s"])
    if not images:
        raise PrivmedError(
            "more: no site uploaded encrypted data; run it with --privacy more --model poly-cnn "
            f"({ctx.rejections[0]['reason'] if ctx.rejections else 'no reply'})"
        )
    if len(key_ids) != 1:
        raise PrivmedError(f"more: the sites encrypted under {len(key_ids)} different keys; they must share one")
    shapes = {tuple(x.shape[1:]) for x in images}
    if len(shapes) != 1:
        raise PrivmedError(f"more: the sites' encrypted images differ in shape ({sorted(shapes)})")
    return torch.cat(images), torch.cat(labels), {"key-id": key_ids.pop(), "encrypt_seconds": enc_s}


def _upload_problem(reply: Message) -> str | None:
    if reply.has_error():
        return f"site error: {reply.error.reason}"
    if "more-data" not in reply.content.array_records or "more" not in reply.content.config_records:
        return "reply carries no MORE ciphertexts"
    data = reply.content["more-data"]
    if set(data.keys()) != {"images", "labels"}:
        return f"encrypted upload holds {sorted(data.keys())}, expected images and labels"
    x, y = data["images"].numpy(), data["labels"].numpy()
    if x.ndim != 6 or x.shape[-2:] != (2, 2) or y.ndim != 4 or y.shape[-2:] != (2, 2) or len(x) != len(y):
        return f"malformed ciphertexts: images {x.shape}, labels {y.shape} (expected (N, C, H, W, 2, 2), (N, K, 2, 2))"
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return "ciphertexts hold NaN or Inf"
    return None


def _sealed(params: mn.Params, key_id: str) -> ArrayRecord:
    weights = to_bytes(ArrayRecord({k: Array(v.detach().numpy()) for k, v in params.items()}))
    return seal_predictor(ConfigRecord({"weights": weights, "key-id": key_id}))


def plain_epoch_seconds(model: torch.nn.Module, n: int, shape: tuple[int, ...], n_classes: int, ctx, opts) -> float:
    """The same network's epoch on plaintext of the ciphertexts' shape (dummy values: the timing does not need data)."""
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(ctx.seed)
    x, y = (
        torch.rand((n, *shape), generator=gen),
        mn.onehot(torch.randint(0, n_classes, (n,), generator=gen), n_classes),
    )
    opt = mn.plain_optimizer(model, lr=opts.lr, momentum=opts.momentum)
    t0 = time.perf_counter()
    mn.plain_sgd_epoch(model, opt, x, y, batch_size=ctx.settings.batch_size, rng=ctx.rng(SHUFFLE_SALT + 1))
    return time.perf_counter() - t0


def run(ctx: ProtocolContext) -> ProtocolOutput:
    opts: MoreOptions = ctx.options
    nodes = node_ids(ctx)
    images, labels, info = collect(ctx, nodes)
    state = ctx.initial.to_torch_state_dict()
    first = next(k for k, v in state.items() if v.dim() == 4)
    model = PolyCNN(int(state[first].shape[1]), int(labels.shape[1]))
    model.load_state_dict(state)
    layers = mn.ring_layers(model)
    params = mn.encode_params(state)  # public initial weights as ciphertexts w·I
    velocity = {k: torch.zeros_like(v) for k, v in params.items()}
    rng = ctx.rng(SHUFFLE_SALT)
    train_s, epochs = 0.0, 0
    predictor = _sealed(params, info["key-id"])
    for rnd in range(ctx.start_round, ctx.settings.rounds + 1):
        t0 = time.perf_counter()
        for _ in range(ctx.settings.local_epochs):
            mn.ring_sgd_epoch(
                layers, params, velocity, images, labels,
                lr=opts.lr, momentum=opts.momentum, batch_size=ctx.settings.batch_size, rng=rng,
            )  # fmt: skip
            epochs += 1
        train_s += time.perf_counter() - t0
        if not all(torch.isfinite(v).all() for v in params.values()):
            raise PrivmedError(f"more: training on ciphertexts diverged in round {rnd}; lower the option lr")
        predictor = _sealed(params, info["key-id"])
        ctx.evaluate_fn(rnd, predictor)
    plain_s = plain_epoch_seconds(model, len(images), tuple(images.shape[1:4]), int(labels.shape[1]), ctx, opts)
    ct_bytes = images.numel() * images.element_size() + labels.numel() * labels.element_size()
    per_epoch = train_s / max(epochs, 1)
    return ProtocolOutput(
        predictor,
        measured={
            "communication": {
                "more_ciphertext_bytes": ct_bytes,
                "plaintext_float32_bytes": ct_bytes // 4,
                "expansion_factor": 4.0,
                "note": "each value (pixel, one-hot label entry) becomes a 2x2 float32 matrix",
            },
            "runtime": {
                "encrypt_seconds_all_sites": info["encrypt_seconds"],
                "ciphertext_seconds_per_epoch": per_epoch,
                "plaintext_seconds_per_epoch": plain_s,
                "time_ratio_vs_plaintext": per_epoch / plain_s,
                "note": "the same network and SGD on plaintext of the same shape, timed in this run by the server",
            },
        },
    )


SPEC = ProtocolSpec(
    name="more",
    technique="vizitiu2019-more",
    run=run,
    views={
        "coordinator": View(
            CIPHERTEXT,
            "MORE ciphertexts of every site's training images and one-hot labels, and of the model it trains; "
            "MORE is not semantically secure: one known pixel, or the ciphertexts alone, give the key",
        ),
        "another site": View(
            MODEL,
            "the decrypted final model; it holds the shared key, so any other site's "
            "ciphertexts it obtains, it decrypts",
        ),  # fmt: skip
        "eavesdropper": View(CIPHERTEXT, "the same ciphertexts as the coordinator"),
    },
    active_coordinator="nothing beyond the honest case: it can already recover the key; it can also train any "
    "model it likes (no integrity)",
    schedule="one trainer",
    options=MoreOptions,
    extra_attacks=("key-recovery",),
    deploy_refusal=(
        "the hospitals' shared MORE key is generated once among the sites in-process; Flower SuperNodes have no key "
        "agreement yet, and the deployed harness would need the key to measure the model"
    ),
)
