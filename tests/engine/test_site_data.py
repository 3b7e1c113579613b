"""Sites that serve their own files, and a coordinator that only asks them what they hold (no servers).

The deployment's own ClientApp runs on a stand-in SuperLink (tests/engine/test_site_grid.py) whose nodes are
told only their own MedMNIST-format file (node config ``data``), each in its own folder; the coordinator's
run config names none of them. tests/engine/test_deployment.py runs the same on real SuperNodes with TLS.
"""

import numpy as np
import pytest

import privmed.data.registry
import privmed.engine.session
from privmed.config import from_dict, replace
from privmed.data.registry import site_data_spec
from privmed.engine.deploy import client_app, run_config_of, serve
from privmed.errors import PrivmedError
from tests.engine.test_site_grid import SuperLinkLike

# the run asks for 32x32 phantom images: what the sites hold (16x16 files) can only come from the sites
CONFIG = from_dict(
    {"seed": 3, "data": {"sites": 3, "image_size": 32}, "train": {"rounds": 1, "lr": 0.01, "batch_size": 16}}
)
SIZES = {"ward-a": (24, 6, 8), "ward-b": (40, 8, 10), "ward-c": (16, 4, 6)}  # train, val, test images


def write_npz(path, sizes, *, side=16, seed=0):
    """A MedMNIST-format file: uint8 grey images [N, side, side], labels [N, 1] of both classes in every split."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes):
        labels = np.arange(n) % 2
        images = rng.integers(0, 60, (n, side, side)) + 120 * labels[:, None, None]  # the class is visible
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images.astype(np.uint8), labels[:, None]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def ward_files(root, sizes=SIZES, sides=None):
    """Each ward's file in its own folder (``root/<ward>/``), as each hospital holds its own."""
    sides = sides or {}
    return {
        w: write_npz(root / w / f"{w}.npz", s, side=sides.get(w, 16), seed=k) for k, (w, s) in enumerate(sizes.items())
    }


def wards_superlink(config, files, node_ids=(71, 5, 333)):
    return SuperLinkLike(
        {n: client_app for n in node_ids},
        run_config=run_config_of(config),
        node_configs={n: {"site-name": w, "data": f"medmnist:{p}"} for n, (w, p) in zip(node_ids, files.items())},
    )


@pytest.fixture
def no_phantom(monkeypatch):
    """Building a generated federation anywhere (coordinator or site) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a phantom federation was built")

    monkeypatch.setattr(privmed.engine.session, "build_federation", refuse)
    monkeypatch.setattr(privmed.data.registry, "load_federation", refuse)


@pytest.mark.parametrize("protocol", ["fedavg", "cwt"])
def test_sites_serve_their_own_files_and_the_coordinator_learns_only_their_description(tmp_path, no_phantom, protocol):
    config = replace(CONFIG, protocol=protocol)
    files = ward_files(tmp_path)
    assert not any(str(p) in str(run_config_of(config)) for p in files.values())  # the coordinator's only input
    result = serve(wards_superlink(config, files), config, wait_nodes_s=5, reply_timeout_s=60)

    assert result.reliability["sites"] == sorted(SIZES) and not result.reliability["rejected_updates"]
    assert result.dataset["image_shape"] == [1, 16, 16] and result.dataset["n_classes"] == 2
    got = {d["site"]: tuple(d["images"].values()) for d in result.dataset["distribution"]}
    assert got == SIZES
    assert all("labels_train" not in d for d in result.dataset["distribution"])  # sizes only
    evaluation = result.performance["evaluation"]
    assert evaluation["test_images"] == sum(s[2] for s in SIZES.values())  # each site measured its own test split
    assert set(result.performance["per_site"]) == set(SIZES)


def test_a_site_whose_images_differ_is_refused_by_name(tmp_path, no_phantom):
    files = ward_files(tmp_path, sides={"ward-b": 20})
    with pytest.raises(
        PrivmedError, match=r"disagree on the image shape: site ward-b has 1x20x20, the other sites 1x16x16"
    ):
        serve(wards_superlink(CONFIG, files), CONFIG, wait_nodes_s=5, reply_timeout_s=60)


def test_a_site_that_cannot_read_its_file_is_named(tmp_path, no_phantom):
    files = ward_files(tmp_path)
    files["ward-c"].write_bytes(b"not a zip")
    with pytest.raises(PrivmedError, match=r"site ward-c did not describe its data: site error: .*ward-c.npz"):
        serve(wards_superlink(CONFIG, files), CONFIG, wait_nodes_s=5, reply_timeout_s=60)


def write_image_folder(folder, n_patients=12, side=20):
    """A folder of PNG images (two per patient, both classes) with its labels.csv, as README "Your own data" shows."""
    from PIL import Image

    folder.mkdir(parents=True)
    rows = ["path,label,patient_id"]
    rng = np.random.default_rng(7)
    for p in range(n_patients):
        for j in range(2):
            label = p % 2
            img = (rng.integers(0, 60, (side, side)) + 120 * label).astype(np.uint8)
            Image.fromarray(img).save(folder / f"p{p}_{j}.png")
            rows.append(f"p{p}_{j}.png,{label},P{p}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_a_folder_of_images_and_npz_files_serve_one_run(tmp_path, no_phantom):
    """ward-b holds 20x20 PNGs: resized to the run's image size (16), split by patient at the site."""
    config = replace(CONFIG, protocol="fedavg", **{"data.image_size": 16, "data.sites": 2})
    folder = write_image_folder(tmp_path / "ward-b" / "images")
    files = {"ward-a": write_npz(tmp_path / "ward-a" / "a.npz", SIZES["ward-a"]), "ward-b": folder}
    nodes = {8: "ward-a", 9: "ward-b"}
    grid = SuperLinkLike(
        {n: client_app for n in nodes},
        run_config=run_config_of(config),
        node_configs={n: {"site-name": w, "data": site_data_spec(str(files[w]))} for n, w in nodes.items()},
    )
    result = serve(grid, config, wait_nodes_s=5, reply_timeout_s=60)
    sizes = {d["site"]: d["images"] for d in result.dataset["distribution"]}
    assert tuple(sizes["ward-a"].values()) == SIZES["ward-a"]
    assert sum(sizes["ward-b"].values()) == 24 and sizes["ward-b"]["train"] > 0  # every image, split by patient
    assert result.dataset["image_shape"] == [1, 16, 16] and result.reliability["completed"]


def test_what_privmed_site_data_accepts(tmp_path):
    npz = write_npz(tmp_path / "h.npz", (4, 2, 2))
    folder = write_image_folder(tmp_path / "imgs", n_patients=2)
    assert site_data_spec(str(npz)) == f"medmnist:{npz.resolve()}"
    assert site_data_spec(str(folder)) == f"folder:{(folder / 'labels.csv').resolve()}"
    assert site_data_spec("phantom:1") == "phantom:1"
    with pytest.raises(PrivmedError, match="give a MedMNIST-format .npz, a labels .csv or a folder"):
        site_data_spec(str(tmp_path / "notes.txt"))


def test_privmed_site_refuses_a_file_it_cannot_read_before_starting_flower(tmp_path):
    from typer.testing import CliRunner

    from privmed.cli import app

    bad = tmp_path / "ward.npz"
    bad.write_bytes(b"not a zip")
    res = CliRunner().invoke(
        app, ["site", "--superlink", "127.0.0.1:1", "--name", "w", "--data", str(bad), "--insecure"]
    )
    assert res.exit_code == 2 and "ward.npz is not a readable .npz" in res.output, res.output


@pytest.mark.parametrize(
    ("protocol", "privacy"),
    [("fedavg", {"mechanism": "dp-sgd", "epsilon": 8.0}), ("snt", {"mechanism": "aes-gcm"})],
)
def test_a_mechanism_plans_at_each_site_from_the_roster_the_coordinator_sends(tmp_path, no_phantom, protocol, privacy):
    """Each site's copy of the mechanism needs every site's sizes (DP: noise per site; SNT: the sites' names)."""
    from privmed.privacy.aes_keys import write_key

    if protocol == "snt":
        privacy = {**privacy, "key_file": str(write_key(tmp_path / "snt.key"))}
    config = replace(CONFIG, protocol=protocol, privacy=privacy, **{"data.sites": 2})
    files = ward_files(tmp_path, sizes={w: SIZES[w] for w in ("ward-a", "ward-b")})
    result = serve(wards_superlink(config, files, node_ids=(17, 4)), config, wait_nodes_s=5, reply_timeout_s=60)
    assert result.reliability["completed"] and not result.reliability["rejected_updates"], result.reliability
    assert result.reliability["sites"] == ["ward-a", "ward-b"]
