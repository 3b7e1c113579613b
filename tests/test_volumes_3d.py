"""3-D volumes under the protocols: a MedMNIST-3D file (written here) trains as volumes, not slices."""

import numpy as np
import pytest
import torch

from privmed.config import DataConfig, RunConfig, TrainSettings
from privmed.models import MODELS, build_model
from privmed.run import execute


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """Cubes of 16³ voxels: class 1 holds a bright 6³ block in one corner, class 0 in the other (separable)."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, k in (("train", 48), ("val", 16), ("test", 16)):
        x = rng.integers(0, 60, size=(k, 16, 16, 16)).astype(np.uint8)
        y = rng.integers(0, 2, size=(k, 1))
        for i in range(k):
            lo = 2 if y[i, 0] else 8
            x[i, lo : lo + 6, lo : lo + 6, lo : lo + 6] = 200
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = x, y
    path = tmp_path_factory.mktemp("m3d") / "toy3d.npz"
    np.savez(path, **arrays)
    return f"medmnist:{path}"


@pytest.mark.parametrize(
    ("protocol", "privacy"),
    [("centralised", {}), ("fedavg", {}), ("cwt", {}), ("cwt", {"mechanism": "dp-sgd", "noise_multiplier": 0.5})],
)
def test_volumes_train_as_volumes_under_each_protocol(volumes, protocol, privacy):
    cfg = RunConfig(
        protocol=protocol,
        privacy=privacy,
        data=DataConfig(dataset=volumes, split="iid", sites=2),
        train=TrainSettings(rounds=4, batch_size=8, lr=3e-3),
    )
    result = execute(cfg)
    assert result.dataset["image_shape"] == [1, 16, 16, 16]
    weights = result.predictor.to_torch_state_dict()
    assert weights["features.0.0.weight"].dim() == 5  # Conv3d kernels: trained on volumes
    if not privacy:
        assert result.performance["final"]["auroc"] > 0.8
    else:
        assert result.privacy["epsilon"] > 0 and np.isfinite(result.performance["final"]["accuracy"])


SEQUENCE_ONLY = {"he-clstm"}  # a CNN + LSTM over 2-D visits [T, H, W]: a volume is not a sequence


@pytest.mark.parametrize("name", sorted(set(MODELS) - SEQUENCE_ONLY))
def test_every_network_builds_for_volumes(name):
    model = build_model(name, in_channels=1, n_classes=2, seed=0, spatial_dims=3)
    out = model(torch.zeros(2, 1, 32, 32, 32))
    assert out.shape[0] == 2 and (out.dim() == 2 or out.shape[2:] == (32, 32, 32))


@pytest.mark.parametrize("name", sorted(SEQUENCE_ONLY))
def test_a_sequence_network_refuses_volumes_by_name(name):
    with pytest.raises(ValueError, match="2-D image sequences"):
        build_model(name, in_channels=1, n_classes=2, seed=0, spatial_dims=3)


def test_the_phantom_makes_volumes_with_3d_lesion_masks_and_they_train():
    """``phantom:v2?volume=1``: one image_size³ volume per patient visit; the 2-D phantom's cohort and scanners."""
    from privmed.engine.session import build_federation
    from privmed.errors import PrivmedError

    data = DataConfig(dataset="phantom:v2?volume=1", image_size=16)
    fed = build_federation(data, 0)
    flat = build_federation(DataConfig(image_size=16), 0)
    assert fed.image_shape == (1, 16, 16, 16) and fed.sites[0].train.masks.shape[1:] == (1, 16, 16, 16)
    assert [s.train.n_patients for s in fed.sites] == [s.train.n_patients for s in flat.sites]  # one volume each
    lesion = fed.pooled("train").labels == 1
    masks = fed.pooled("train").masks
    assert masks[lesion].reshape(lesion.sum(), 16, -1).any(axis=2).sum(axis=1).max() > 1  # lesions span slices
    result = execute(RunConfig(protocol="fedavg", data=data, train=TrainSettings(rounds=2, batch_size=8)))
    assert result.dataset["image_shape"] == [1, 16, 16, 16] and np.isfinite(result.performance["final"]["auroc"])
    with pytest.raises(PrivmedError, match="volumes are a v2 feature"):
        build_federation(DataConfig(dataset="phantom:v1?volume=1", image_size=16), 0)


@pytest.fixture(scope="module")
def phantom_volumes():
    from privmed.engine.session import build_federation

    data = DataConfig(dataset="phantom:v2?volume=1", image_size=16)
    return data, build_federation(data, 0)


@pytest.mark.parametrize("protocol", ["centralised", "fedavg", "cwt"])
def test_3d_lesion_masks_segment_with_monai_unet_under_each_protocol(phantom_volumes, protocol):
    """MONAI's UNet (spatial_dims=3) on the phantom's 3-D lesion masks: Dice and HD95 scored on volumes."""
    data, fed = phantom_volumes
    cfg = RunConfig(
        protocol=protocol, task="segmentation", model="unet", data=data, train=TrainSettings(rounds=1, batch_size=16)
    )
    result = execute(cfg, fed=fed)
    weights = result.predictor.to_torch_state_dict()
    assert any(w.dim() == 5 for w in weights.values())  # Conv3d kernels
    final = result.performance["final"]
    assert result.performance["metric"] == "dice" and 0.0 < final["dice"] <= 1.0
    assert final["empty_fraction"] == pytest.approx(0.5)  # held-out test patients: half have a lesion
    assert 0.0 < final["hd95"] < np.sqrt(3 * 16**2)  # below the worst case (the volume's diagonal)
    empty = final["empty_fraction"]  # overall Dice: an empty volume scores 1 only if nothing is predicted on it
    assert final["dice_overall"] == pytest.approx(
        (1 - empty) * final["dice"] + empty * (1 - final["empty_false_positive_rate"])
    )
