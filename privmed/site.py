"""A hospital: its handlers (``train``, ``evaluate``) as a Flower ClientApp.

The site holds its own arrays; only model weights and metrics leave it, inside
Flower Messages, so the engine can count the bytes and a privacy mechanism
(a Flower client ``mod``) can transform them. Hyper-parameters come in the
message's ConfigRecord; everything else is fixed when the app is built.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from privmed.data.base import SiteData
from privmed.evaluation import EVAL, SPLITS, SUMMARY, members_of, predict_members, site_summary
from privmed.models import build_model
from privmed.privacy.base import Trainer
from privmed.protocols.base import TrainInstruction
from privmed.tasks import evaluate, train_local


@dataclass(frozen=True)
class ModelSpec:
    """What network every party builds (the architecture is public)."""

    name: str
    in_channels: int
    n_classes: int
    task: str
    spatial_dims: int = 2  # 3: volumes [C, D, H, W]

    def build(self, seed: int = 0) -> torch.nn.Module:
        return build_model(
            self.name, in_channels=self.in_channels, n_classes=self.n_classes, seed=seed, spatial_dims=self.spatial_dims
        )


def load_arrays(model: torch.nn.Module, arrays: ArrayRecord) -> None:
    """Load received weights; a wrong shape, a missing key or a NaN/Inf raises ValueError naming it.

    A site trains or evaluates nothing it cannot trust: NaN or 1e30 weights from
    the coordinator would make its reply (or its metrics) garbage.
    """
    state = arrays.to_torch_state_dict()
    own = model.state_dict()
    if set(state) != set(own):
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise ValueError(f"received weights do not fit the model (missing {missing[:3]}, unexpected {extra[:3]})")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(
                f"received weights do not fit the model: {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}"
            )
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ValueError(f"received weights hold NaN or Inf ({k}); not trained or evaluated")
    model.load_state_dict(state)


def site_seed(config_seed: int, site_index: int) -> int:
    """A per-site, per-round seed derived from the coordinator's round seed."""
    return int(np.random.SeedSequence([config_seed, site_index]).generate_state(1)[0])


NODE_MEMORY = "privmed-site-memory"  # the record of Flower's node state that holds a site's memory on a SuperNode


def _node_memory(context: Context) -> dict:
    rec = context.state.config_records.get(NODE_MEMORY)
    if rec is None or "optimizer" not in rec:
        return {}
    return {"adam": torch.load(io.BytesIO(bytes(rec["optimizer"])), weights_only=True)}


def _keep_node_memory(context: Context, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state["adam"], buf)
    context.state.config_records[NODE_MEMORY] = ConfigRecord({"optimizer": buf.getvalue()})


def make_client_app(
    site: SiteData,
    spec: ModelSpec,
    *,
    site_index: int,
    mods: Sequence[Mod] = (),
    trainer: Trainer | None = None,
    memory: dict | None = None,
) -> ClientApp:
    """The ClientApp of one site.

    ``mods`` wrap it (privacy mechanisms, fault injection); ``trainer`` replaces
    plain local training (DP-SGD and other private trainers). ``memory``: what
    the site keeps between messages (its optimiser's state: plain training
    continues Adam across the site's visits and rounds); it never leaves the
    site; the in-process checkpoint keeps it as a site would keep its own.
    Without ``memory`` (a SuperNode) the site keeps it in Flower's node state
    (``context.state``), which persists across the messages of a run.
    """
    app = ClientApp(mods=list(mods))
    if memory is not None:
        memory.setdefault("optimizer", {})

    def local_train(model: torch.nn.Module, data: Any, context: Context, config: ConfigRecord, **kw: Any) -> dict:
        if hasattr(model, "train_site"):  # a network with its own objective (Privacy-Net's adversarial training)
            if trainer is not None:
                raise ValueError("a network that trains itself (privacy-net) cannot take a private trainer")
            return model.train_site(data, config=config, optimizer_state=memory["optimizer"] if memory else {}, **kw)
        if trainer is not None:  # DP trainers: their own optimiser per call (Opacus wraps it)
            return trainer(model, data, **kw)
        if memory is not None:
            return train_local(model, data, optimizer_state=memory["optimizer"], **kw)
        state = _node_memory(context)  # a SuperNode: the site's memory lives in Flower's per-run node state
        stats = train_local(model, data, optimizer_state=state, **kw)
        _keep_node_memory(context, state)
        return stats

    def count(todo: TrainInstruction, stats: dict[str, float]) -> None:
        """The compute this visit spent, in the site's memory (the harness reads it as ground truth, like time)."""
        if memory is None:
            return
        budget = memory.setdefault("budget", {"local_steps": 0, "sample_gradients": 0})
        n = len(site.train)
        budget["local_steps"] += int(stats.get("dp-steps", todo.local_epochs * math.ceil(n / todo.batch_size)))
        budget["sample_gradients"] += todo.local_epochs * n  # DP: the expected number under Poisson sampling

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        todo = TrainInstruction.from_record(msg.content["config"])
        model = spec.build()
        load_arrays(model, msg.content["arrays"])
        stats = local_train(
            model,
            site.train,
            context,
            msg.content["config"],
            task=spec.task,
            epochs=todo.local_epochs,
            batch_size=todo.batch_size,
            lr=todo.lr,
            seed=site_seed(todo.seed, site_index),
        )
        count(todo, stats)
        return Message(
            RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(stats)}), reply_to=msg
        )

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        if EVAL in msg.content.config_records:  # the harness's request: a summary of one of the site's own splits
            return _summarise(msg)
        model = spec.build()
        load_arrays(model, msg.content["arrays"])
        data = site.val if len(site.val) else site.train
        m = evaluate(model, data, task=spec.task)
        m = {k: v for k, v in m.items() if np.isfinite(v)}
        m["num-examples"] = float(len(data))
        return Message(RecordDict({"metrics": MetricRecord(m)}), reply_to=msg)

    def _summarise(msg: Message) -> Message:
        split = str(msg.content[EVAL]["split"])
        if split not in SPLITS:
            raise ValueError(f"cannot evaluate on split {split!r}; valid: {', '.join(SPLITS)}")
        data = getattr(site, split)
        models = []
        for arrays in members_of(msg.content):
            model = spec.build()
            load_arrays(model, arrays)
            models.append(model)
        proba = predict_members(models, data) if len(data) else np.zeros((0, spec.n_classes))
        return Message(RecordDict({SUMMARY: site_summary(proba, data, spec.task)}), reply_to=msg)

    return app
