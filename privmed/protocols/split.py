"""Split network: the first layer(s) stay at the hospital, the server trains the rest on their activations.

Paper: Jeon et al. 2019, "Privacy-Preserving Deep Learning Computation for
Geo-Distributed Medical Big-Data Platforms" (DSN-S): the first hidden layer
L¹ is trained at each hospital, L² … Lᵏ on a central server from the
hospitals' L¹ outputs; only the gradient at the cut crosses back to the
hospital. The scheme is split learning (Gupta & Raskar 2018; Vepakomma et
al. 2018, "Split learning for health"), whose U-shaped variant also keeps
the labels at the hospital.

Mechanism here, on privmed's default CNN (three conv blocks and a linear
head, :class:`privmed.models.SmallCNN`): the site holds ``cut`` conv blocks
(default 1: Jeon's one-layer client), the coordinator the other blocks and
the head. Sites are visited in turn each round (vanilla split learning's
round robin); at its visit a site receives the client part's weights (as the
previous site left them), runs ``local_epochs`` over its training images
and returns the client part at the end. Each message carries
``batches_per_message`` mini-batches at once: the site sends their cut-layer
activations (and labels), the coordinator trains its part on them one
mini-batch per Adam step and sends back the gradients at the cut, which the
site applies, again one step per mini-batch, in the reply that carries the
next mini-batches' activations. ``ushaped=1``: the site also holds the head
and the labels; the coordinator returns its last block's output, the site
computes the loss and returns the gradient of the loss with respect to that
output, and the coordinator backpropagates it to the cut. ``nopeek=λ``
(Vepakomma et al. 2020, "NoPeek: information leakage reduction to share
activations in distributed deep learning"): the site adds λ·dCor(x, a), the
distance correlation between its input images and its cut activations in
each mini-batch, to its own loss (it alone holds both), to make the
activations harder to invert.

Faithful: the cut after the first layer, the server training on activations,
only the cut's gradient returned, labels at the server; split learning's
round robin and the U-shape (Vepakomma 2018); NoPeek's loss
(cross-entropy + λ·DCor). Differs: Jeon et al. pass L¹'s weights nowhere
(their one figure leaves open how the hospitals' L¹ relate); here the client
part travels from site to site through the coordinator, as in vanilla split
learning, so one model is released and evaluated — which also hands the
coordinator the client weights (the white-box attack uses them). Batching
several mini-batches per message makes the site's gradient slightly stale:
the site recomputes each mini-batch's forward pass at its current weights
when the gradient arrives (the gradient itself was computed by the server on
activations from the weights before the message's first step). The paper's
models (VGG, ResNet on CIFAR) are replaced by the default CNN; its baseline
(LSGD) by FedAvg and CWT in the bench. The coordinator's own Adam state
lives for one run (a ``--resume`` restarts it). Only the ``cnn`` network and
classification are supported (the cut is defined on its blocks).

The leakage of the activations is measured by the audit's
``activation-inversion`` attack (:mod:`privmed.attacks.split_inversion`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from torch import nn

from privmed.data.base import SiteData
from privmed.errors import PrivmedError
from privmed.options import Options
from privmed.protocols.base import CutView, ProtocolContext, ProtocolOutput, ProtocolSpec, node_ids
from privmed.threat import ACTIVATIONS, MODEL, View

CNN_BLOCKS = 3  # SmallCNN's conv blocks: the cut is after 1 or 2 of them
FLAG = "split"  # the config key that marks a split-learning message (the site half answers it, not the train handler)


@dataclass(frozen=True)
class SplitOptions(Options):
    cut: int = 1  # conv blocks at the site (Jeon et al.: the first layer)
    ushaped: int = 0  # 1: the site also holds the head and the labels (U-shaped split learning)
    nopeek: float = 0.0  # λ of NoPeek's distance-correlation penalty at the site (0: off)
    batches_per_message: int = 8  # mini-batches whose activations travel in one message

    def __post_init__(self) -> None:
        if not 1 <= self.cut < CNN_BLOCKS:
            raise PrivmedError(f"cut must be 1 or 2 (conv blocks kept at the site), got {self.cut}")
        if self.ushaped not in (0, 1):
            raise PrivmedError(
                f"ushaped must be 0 (labels at the server) or 1 (labels at the site), got {self.ushaped}"
            )
        if not self.nopeek >= 0:
            raise PrivmedError(f"nopeek (λ of the distance-correlation penalty) must be >= 0, got {self.nopeek}")
        if self.batches_per_message < 1:
            raise PrivmedError(f"batches_per_message must be >= 1, got {self.batches_per_message}")


# -- the network, cut in two -------------------------------------------------------------------------------------


def cnn_from_state(state: dict[str, torch.Tensor]) -> nn.Module:
    """The default CNN whose weights ``state`` holds (its shapes give channels, width, classes, dimensions)."""
    from privmed.models import SmallCNN

    first = state.get("features.0.0.weight")
    if first is None or "head.2.weight" not in state or f"features.{CNN_BLOCKS}.0.weight" in state:
        raise PrivmedError("the split protocol cuts privmed's default network only: use --model cnn")
    model = SmallCNN(first.shape[1], state["head.2.weight"].shape[0], width=first.shape[0], spatial_dims=first.ndim - 2)
    model.load_state_dict(state)
    return model


def client_keys(state: dict, opts: SplitOptions) -> list[str]:
    """The weights the site holds: its conv blocks (and the head in the U-shape)."""
    mine = tuple(f"features.{i}." for i in range(opts.cut)) + (("head.",) if opts.ushaped else ())
    return [k for k in state if k.startswith(mine)]


def client_forward(model: nn.Module, x: torch.Tensor, cut: int) -> torch.Tensor:
    """The cut-layer activations: the site's first ``cut`` blocks."""
    return model.features[:cut](x)


def server_forward(model: nn.Module, a: torch.Tensor, opts: SplitOptions) -> torch.Tensor:
    """The coordinator's part: the remaining blocks, then the head unless the site holds it (U-shape)."""
    h = model.features[opts.cut :](a)
    return h if opts.ushaped else model.head(h)


def server_parameters(model: nn.Module, opts: SplitOptions) -> list[nn.Parameter]:
    params = list(model.features[opts.cut :].parameters())
    return params if opts.ushaped else params + list(model.head.parameters())


def client_parameters(model: nn.Module, opts: SplitOptions) -> list[nn.Parameter]:
    params = list(model.features[: opts.cut].parameters())
    return params + list(model.head.parameters()) if opts.ushaped else params


def cut_view(model: nn.Module, opts: SplitOptions) -> CutView:
    """What the coordinator can compute with the released model: the site's activations (and the U-shape's head)."""
    if not opts.ushaped:
        return CutView(encode=lambda x: client_forward(model, x, opts.cut))
    return CutView(encode=lambda x: client_forward(model, x, opts.cut), server_output=model.features, head=model.head)


# -- NoPeek's penalty ----------------------------------------------------------------------------------------------


def distance_correlation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sample distance correlation (Székely et al. 2007) of two batches [N, ...], differentiable.

    Written in torch because NoPeek needs its gradient; the audit measures it
    with the ``dcor`` package, which this agrees with (tests/protocols/test_split.py).
    """

    def centred(t: torch.Tensor) -> torch.Tensor:
        flat = t.flatten(1).double()
        sq = (flat * flat).sum(1)
        # pairwise squared distances from the Gram matrix: one matmul, not an [N, N, D] difference tensor
        d = torch.sqrt((sq[:, None] + sq[None, :] - 2 * flat @ flat.T).clamp_min(0) + 1e-12)
        return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()

    a, b = centred(x), centred(y)
    dcov_xy, dcov_xx, dcov_yy = (a * b).mean(), (a * a).mean(), (b * b).mean()
    return torch.sqrt(dcov_xy.clamp_min(0) / torch.sqrt(dcov_xx * dcov_yy).clamp_min(1e-24))


# -- wire helpers ---------------------------------------------------------------------------------------------------


def _pack(chunks: list[torch.Tensor]) -> ArrayRecord:
    """Mini-batches of one message as one tensor and their sizes."""
    return ArrayRecord(
        {
            "values": Array(torch.cat(chunks).detach().float().numpy()),
            "sizes": Array(np.asarray([len(c) for c in chunks], dtype=np.int64)),
        }
    )


def _unpack(record: ArrayRecord) -> list[torch.Tensor]:
    values, sizes = torch.from_numpy(record["values"].numpy().copy()), record["sizes"].numpy()
    if sizes.ndim != 1 or sizes.sum() != len(values) or (sizes < 1).any():
        raise ValueError(f"split message: sizes {sizes.tolist()} do not fit {len(values)} rows")
    if not torch.isfinite(values).all():
        raise ValueError("split message holds NaN or Inf")
    return list(torch.split(values, sizes.tolist()))


def _weights(model: nn.Module, keys: list[str]) -> ArrayRecord:
    state = model.state_dict()
    return ArrayRecord({k: Array(state[k].detach().numpy().copy()) for k in keys})


def _load(model: nn.Module, record: ArrayRecord, keys: list[str]) -> None:
    got = {k: torch.from_numpy(record[k].numpy().copy()) for k in record}
    if sorted(got) != sorted(keys):
        raise ValueError(f"split: client weights {sorted(got)[:3]}… do not fit the client part {sorted(keys)[:3]}…")
    if not all(torch.isfinite(v).all() for v in got.values()):
        raise ValueError("split: client weights hold NaN or Inf")
    model.load_state_dict(got, strict=False)


# -- the site half -------------------------------------------------------------------------------------------------


@dataclass
class SiteVisit:
    """What a site keeps during a visit (and its Adam state across visits): never sent whole."""

    model: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    adam: dict | None = None
    queue: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # mini-batches still to send
    pending: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # sent, awaiting gradients
    steps: int = 0
    samples: int = 0


def site_mod(site_index: int, options: SplitOptions | None = None, *, reproducible_noise: bool = False, site=None):
    """The site half of split learning as a Flower client mod (it needs the site's data: ``site``)."""
    if not isinstance(site, SiteData):
        raise PrivmedError("the split protocol's site half needs the site's data")
    state = SiteVisit()

    def mod(msg: Message, ctx: Context, call_next: ClientAppCallable) -> Message:
        cfg = msg.content.config_records.get("config")
        if msg.metadata.message_type != "train" or cfg is None or FLAG not in cfg:
            return call_next(msg, ctx)
        opts = SplitOptions(**{k: cfg[k] for k in SplitOptions.__dataclass_fields__ if k in cfg})
        phase = str(cfg["phase"])
        out: dict = {}
        if phase == "start":
            _start(state, msg.content["client"], cfg, opts)
        elif phase == "head":  # U-shape: the server's output for the pending mini-batches -> d loss / d output
            out["grad_out"] = _head_step(state, _unpack(msg.content["out"]), opts)
        elif phase == "grad":  # the gradients at the cut for the pending mini-batches
            _client_step(state, _unpack(msg.content["grad"]), opts)
        else:
            raise ValueError(f"split: unknown phase {phase!r}")
        if phase != "head":
            if state.queue:
                out.update(_next_chunk(state, opts))
            else:  # the visit is over: the client part goes on to the next site
                state.adam = state.optimizer.state_dict()
                out["client"] = _weights(state.model, client_keys(state.model.state_dict(), opts))
                out["metrics"] = MetricRecord(
                    {
                        "num-examples": float(len(site.train)),
                        "site-steps": float(state.steps),
                        "site-samples": float(state.samples),
                    }
                )
        return Message(RecordDict(out), reply_to=msg)

    def _start(st: SiteVisit, client: ArrayRecord, cfg: ConfigRecord, opts: SplitOptions) -> None:
        from privmed.site import site_seed
        from privmed.tasks import batches

        template = {k: torch.from_numpy(v.numpy()) for k, v in client.items()}
        if st.model is None:
            st.model = _client_model(template, int(cfg["n-classes"]))
        _load(st.model, client, client_keys(st.model.state_dict(), opts))
        st.model.train()
        st.optimizer = torch.optim.Adam(client_parameters(st.model, opts), lr=float(cfg["lr"]))
        if st.adam is not None:
            st.optimizer.load_state_dict(st.adam)
        gen = torch.Generator().manual_seed(site_seed(int(cfg["seed"]), site_index))
        st.queue = [
            b
            for _ in range(int(cfg["local-epochs"]))
            for b in batches(site.train, "classification", int(cfg["batch-size"]), gen)
        ]
        st.pending, st.steps, st.samples = [], 0, 0

    def _next_chunk(st: SiteVisit, opts: SplitOptions) -> dict:
        st.pending, st.queue = st.queue[: opts.batches_per_message], st.queue[opts.batches_per_message :]
        with torch.no_grad():
            acts = [client_forward(st.model, x, opts.cut) for x, _ in st.pending]
        out = {"acts": _pack(acts)}
        if not opts.ushaped:  # labels at the server, as in Jeon et al.
            out["labels"] = ArrayRecord({"y": Array(torch.cat([y for _, y in st.pending]).numpy())})
        return out

    def _head_step(st: SiteVisit, outs: list[torch.Tensor], opts: SplitOptions) -> ArrayRecord:
        if len(outs) != len(st.pending):
            raise ValueError(f"split: {len(outs)} outputs for {len(st.pending)} pending mini-batches")
        grads = []
        for h, (_, y) in zip(outs, st.pending):
            h = h.detach().requires_grad_(True)
            loss = nn.functional.cross_entropy(st.model.head(h), y)
            st.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grads.append(h.grad)
            st.optimizer.step()  # the head's parameters (the blocks have no gradient yet)
        return _pack(grads)

    def _client_step(st: SiteVisit, grads: list[torch.Tensor], opts: SplitOptions) -> None:
        if len(grads) != len(st.pending):
            raise ValueError(f"split: {len(grads)} gradients for {len(st.pending)} pending mini-batches")
        for g, (x, _) in zip(grads, st.pending):
            st.optimizer.zero_grad(set_to_none=True)
            a = client_forward(st.model, x, opts.cut)  # at the current weights (see the module docstring)
            if g.shape != a.shape:
                raise ValueError(f"split: gradient of shape {tuple(g.shape)} for activations {tuple(a.shape)}")
            total = (a * g).sum()
            if opts.nopeek > 0 and len(x) > 1:
                total = total + opts.nopeek * distance_correlation(x, a).float()
            total.backward()
            st.optimizer.step()
            st.steps += 1
            st.samples += len(x)
        st.pending = []

    return mod


def _client_model(template: dict[str, torch.Tensor], n_classes: int) -> nn.Module:
    """A site's network: the default CNN, of which it uses and trains only the client part."""
    from privmed.models import SmallCNN

    first = template["features.0.0.weight"]
    return SmallCNN(first.shape[1], n_classes, width=first.shape[0], spatial_dims=first.ndim - 2)


# -- the coordinator -----------------------------------------------------------------------------------------------


def run(ctx: ProtocolContext) -> ProtocolOutput:
    opts: SplitOptions = ctx.options
    model = cnn_from_state(ctx.initial.to_torch_state_dict())
    model.train()
    keys = client_keys(model.state_dict(), opts)
    optimizer = torch.optim.Adam(server_parameters(model, opts), lr=ctx.settings.lr)
    client = _weights(model, keys)
    server_steps = site_steps = samples = 0
    n_classes = model.head[2].out_features
    for rnd in range(ctx.start_round, ctx.settings.rounds + 1):
        for node in node_ids(ctx):
            visit = _visit(ctx, node, rnd, client, model, optimizer, opts, n_classes)
            if visit is None:
                continue  # rejected: the previous client part carries on
            client, steps, at_site, seen = visit
            server_steps += steps
            site_steps += at_site
            samples += seen
        _load(model, client, keys)
        ctx.evaluate_fn(rnd, ArrayRecord(model.state_dict()))
    rounds = max(ctx.settings.rounds - ctx.start_round + 1, 1)
    return ProtocolOutput(
        ArrayRecord(model.state_dict()),
        measured={
            # the bench's equal-compute check: each image's forward and backward pass through the whole network
            "budget": {
                "local_steps": site_steps,
                "sample_gradients": samples,
                "local_steps_per_round": site_steps / rounds,
                "sample_gradients_per_round": samples / rounds,
            },
            "runtime": {
                "split": {
                    "server_steps": server_steps,
                    "site_steps": site_steps,  # as the sites reported them
                    "cut": opts.cut,
                    "ushaped": bool(opts.ushaped),
                    "batches_per_message": opts.batches_per_message,
                }
            },
        },
    )


def _visit(
    ctx: ProtocolContext,
    node: int,
    rnd: int,
    client: ArrayRecord,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    opts: SplitOptions,
    n_classes: int,
) -> tuple[ArrayRecord, int, int, int] | None:
    """One site's visit: activations up, gradients down, until the site returns its client part.

    Returns the client part, the coordinator's steps, the site's steps and samples (as it reports them), or None if
    rejected.
    """
    cfg = ctx.round_config(rnd)
    cfg.update({FLAG: 1, "n-classes": n_classes, **opts.__dict__})
    steps = 0

    def send(phase: str, **arrays: ArrayRecord) -> Message | None:
        msg = Message(
            RecordDict({**arrays, "config": ConfigRecord({**cfg, "phase": phase})}), node, "train", group_id=str(rnd)
        )
        replies = list(ctx.grid.send_and_receive([msg]))
        if not replies:
            ctx.reject(rnd, node, "no reply")
            return None
        if replies[0].has_error():
            ctx.reject(rnd, node, f"error reply: {replies[0].error.reason}")
            return None
        return replies[0]

    reply = send("start", client=client)
    while reply is not None and "acts" in reply.content.array_records:
        try:
            acts = _unpack(reply.content["acts"])
            labels = None if opts.ushaped else torch.from_numpy(reply.content["labels"]["y"].numpy().astype(np.int64))
            if labels is not None and (
                len(labels) != sum(map(len, acts)) or labels.min() < 0 or labels.max() >= n_classes
            ):
                raise ValueError("labels do not fit the activations or the classes")
        except (ValueError, KeyError) as exc:
            ctx.reject(rnd, node, f"split: {exc}")
            return None
        grad_out = None
        if opts.ushaped:  # the site holds the head: send it the server's output, get d loss / d output back
            with torch.no_grad():
                outs = [server_forward(model, a, opts) for a in acts]
            head = send("head", out=_pack(outs))
            if head is None:
                return None
            try:
                grad_out = _unpack(head.content["grad_out"])
            except (ValueError, KeyError) as exc:
                ctx.reject(rnd, node, f"split: {exc}")
                return None
        grads, start = [], 0
        for i, a in enumerate(acts):
            a = a.requires_grad_(True)
            out = server_forward(model, a, opts)
            optimizer.zero_grad(set_to_none=True)
            if grad_out is not None:
                (out * grad_out[i]).sum().backward()
            else:
                y = labels[start : start + len(a)]
                nn.functional.cross_entropy(out, y).backward()
            start += len(a)
            grads.append(a.grad)
            optimizer.step()
            steps += 1
        reply = send("grad", grad=_pack(grads))
    if reply is None:
        return None
    if "client" not in reply.content.array_records or not math.isfinite(
        float(sum(float(np.abs(v.numpy()).sum()) for v in reply.content["client"].values()))
    ):
        ctx.reject(rnd, node, "split: the visit ended without finite client weights")
        return None
    metrics = reply.content.metric_records.get("metrics")
    if metrics is None:
        return reply.content["client"], steps, 0, 0
    return reply.content["client"], steps, int(metrics.get("site-steps", 0)), int(metrics.get("site-samples", 0))


SPEC = ProtocolSpec(
    name="split",
    technique="jeon2019-split",
    run=run,
    views={
        "coordinator": View(
            ACTIVATIONS,
            "every training image's cut-layer activations and its label (U-shape: the gradient of the loss at its "
            "own output instead of the label), and the client layer(s) after each visit",
        ),
        "another site": View(MODEL, "the client layer(s) as the previous site left them"),
        "eavesdropper": View(
            ACTIVATIONS, "the activations, labels, gradients and client layer(s), in the clear without TLS"
        ),
    },
    active_coordinator="nothing: it can send any gradient and so steer the client layers (e.g. to invertible ones)",
    schedule="sequential",
    options=SplitOptions,
    site_mod=site_mod,
    site_data=True,
    cut_view=cut_view,
)
