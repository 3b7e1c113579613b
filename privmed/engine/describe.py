"""What a deployed coordinator learns about each site's data: asked at set-up, checked, never held.

A real coordinator holds no site data, yet it must build the network (input
channels, spatial size, classes) and tell a mechanism's plan how much each
site holds (example weighting, DP sampling rates). So at set-up the deployed
ServerApp (:func:`privmed.engine.deploy.serve`) sends every site of the run
one ``query`` message (:data:`DESCRIBE`), and each site answers from its own
data (:func:`describe`):

- its name, the image shape ``[C, H, W]`` (``[C, D, H, W]`` for volumes), its
  number of classes and whether it has lesion masks (segmentation);
- the number of images in its training, validation and test splits and of
  patients in its training split.

The sizes are disclosed to the coordinator, as in FedAvg, whose server
weights each site's update by its number of examples (McMahan et al. 2017);
labels, label counts, images and patient ids are not. The coordinator checks
that the sites agree (:func:`federation_of`: same shape, same classes, masks
for segmentation), refusing the run with the site and the disagreement named,
and builds the model from the agreed description. With a privacy mechanism
the coordinator then sends every site all the descriptions (:data:`ROSTER`):
each site's copy of the mechanism plans with every site's sizes (DP noise per
site, HE-FedAvg's weights, SecAgg+'s and AES-GCM's site names), so the sites
also learn each other's names and sizes.

The coordinator's :class:`~privmed.data.base.Federation` is that description
and nothing more: each site's arrays are shape-only stand-ins
(:func:`stand_in`: images a read-only zero-byte broadcast of zeros, labels 0,
patient ids ``site/j`` for the disclosed patient count), so a mechanism's plan
and result.json's ``dataset`` are computed as in-process, from sizes only;
``distribution`` lists what the sites disclosed (:class:`DescribedSite`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord

from privmed.config import RunConfig
from privmed.data.base import ArraySet, Federation, SiteData
from privmed.errors import PrivmedError

DESCRIBE = "privmed-describe"  # the query a site answers with its data's description
ROSTER = "privmed-roster"  # the query that gives every site all the sites' descriptions (a mechanism plans with them)
SPLITS = ("train", "val", "test")


def describe(fed: Federation, site: SiteData, *, name: str) -> ConfigRecord:
    """Site ``name``'s answer to :data:`DESCRIBE`, from its own data ``site`` (``fed``: the federation it is in)."""
    return ConfigRecord(
        {
            "site": name,
            "image-shape": [int(s) for s in fed.image_shape],
            "n-classes": int(fed.n_classes),
            "masks": site.train.masks is not None,
            **{split: len(getattr(site, split)) for split in SPLITS},
            "patients": site.train.n_patients,
        }
    )


@dataclass(frozen=True)
class DescribedSite(SiteData):
    """A site as the coordinator knows it: sizes only (its arrays are :func:`stand_in` s)."""

    patients: int = 0

    def distribution(self, n_classes: int) -> dict:
        return {
            "site": self.name,
            "images": {split: len(getattr(self, split)) for split in SPLITS},
            "patients_train": self.patients,
            "disclosed": "sizes only (labels, images and patient ids stay at the site)",
        }


def stand_in(n: int, shape: tuple[int, ...], *, patients: int = 0, prefix: str = "", masks: bool = False) -> ArraySet:
    """``n`` images' worth of shape and nothing else: zero-byte, read-only zeros; ``patients`` placeholder ids."""
    zeros = np.broadcast_to(np.zeros((1, *shape), np.float32), (n, *shape))
    ids = np.asarray([f"{prefix}/{j % max(patients, 1)}" for j in range(n)])
    mask = np.broadcast_to(np.zeros((1, 1, *shape[1:]), np.uint8), (n, 1, *shape[1:])) if masks else None
    return ArraySet(images=zeros, labels=np.zeros(n, np.int64), patient_ids=ids, masks=mask)


def federation_of(answers: Mapping[str, Mapping | str], config: RunConfig) -> Federation:
    """The coordinator's description of the run's sites (in ``answers``' order, by name), or a PrivmedError naming
    the site that did not answer or disagrees with the others (an answer that is a ``str`` is the site's error)."""
    for name, answer in answers.items():
        if isinstance(answer, str):
            raise PrivmedError(f"site {name} did not describe its data: {answer}")
        if str(answer["site"]) != name:
            raise PrivmedError(f"the site registered as {name} describes itself as {answer['site']!r}")
    described = {name: _parse(name, rec) for name, rec in answers.items()}
    for what, key in (("image shape", "image-shape"), ("number of classes", "n-classes")):
        _agree(described, what, key, config)
    if config.task == "segmentation":
        without = [name for name, d in described.items() if not d["masks"]]
        if without:
            raise PrivmedError(f"site {', '.join(without)} has no lesion masks; a segmentation run needs them")
    first = next(iter(described.values()))
    shape, n_classes = tuple(first["image-shape"]), first["n-classes"]
    sites = tuple(
        DescribedSite(
            name,
            *(stand_in(d[split], shape, patients=d["patients"], prefix=name, masks=d["masks"]) for split in SPLITS),
            patients=d["patients"],
        )
        for name, d in described.items()
    )
    return Federation("sites' own data", n_classes, shape, "each site's own", sites)


def roster_of(answers: Mapping[str, ConfigRecord]) -> str:
    """The sites' descriptions as one JSON string (a ConfigRecord value) for :data:`ROSTER`."""
    return json.dumps({name: dict(rec) for name, rec in answers.items()})


def with_own_data(roster: str, own: SiteData, config: RunConfig) -> tuple[Federation, int]:
    """A site's view of the run: every site as described (``roster``), its own with its real data; and its index.

    A mechanism's copy at the site plans with it exactly as the coordinator's does (same sizes, same order)."""
    answers = json.loads(roster)
    if own.name not in answers:
        raise PrivmedError(f"the coordinator's roster does not list this site ({own.name}): {', '.join(answers)}")
    fed = federation_of(answers, config)
    index = list(answers).index(own.name)
    sites = list(fed.sites)
    sites[index] = own
    return Federation(fed.dataset_name, fed.n_classes, fed.image_shape, fed.split, tuple(sites)), index


def _parse(name: str, rec: Mapping) -> dict:
    try:
        out = {
            "image-shape": [int(s) for s in rec["image-shape"]],
            "n-classes": int(rec["n-classes"]),
            "masks": bool(rec["masks"]),
            "patients": int(rec["patients"]),
            **{split: int(rec[split]) for split in SPLITS},
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise PrivmedError(f"site {name}'s description of its data is incomplete ({exc})") from None
    if not out["train"]:
        raise PrivmedError(f"site {name} has no training images")
    return out


def _agree(described: dict[str, dict], what: str, key: str, config: RunConfig) -> None:
    """All sites give the same ``key``, or a PrivmedError naming those that differ from the most common value."""
    values = {name: tuple(d[key]) if isinstance(d[key], list) else d[key] for name, d in described.items()}
    common = Counter(values.values()).most_common(1)[0][0]  # a tie: the first site's (most_common keeps order)
    odd = {name: v for name, v in values.items() if v != common}
    if not odd:
        return
    show = {name: _show(v) for name, v in odd.items()}
    hint = {
        "image-shape": "every site must give images of one shape (resize them, or use one --image-size for folders)",
        "n-classes": "a site counts the classes its labels reach; set the run's data.n_classes to the task's count",
    }[key]
    raise PrivmedError(
        f"the sites disagree on the {what}: "
        + "; ".join(f"site {name} has {v}" for name, v in show.items())
        + f", the other sites {_show(common)}; {hint}"
    )


def _show(value) -> str:
    return "x".join(str(v) for v in value) if isinstance(value, tuple) else str(value)
