"""A DICOM series and a NIfTI volume set written by the tests train end-to-end through `privmed train`."""

import json

from typer.testing import CliRunner

from privmed.cli import app
from tests.data.conftest import write_dicom_set, write_nifti_set

runner = CliRunner()


def train(dataset, tmp_path, *extra):
    return runner.invoke(
        app,
        [
            "train",
            "--dataset",
            dataset,
            "--split",
            "iid",
            "--sites",
            "2",
            "--image-size",
            "8",
            "--rounds",
            "1",
            "--epochs",
            "1",
            "--name",
            "own",
            "--runs-dir",
            str(tmp_path / "runs"),
            *extra,
        ],
    )


def test_deidentified_dicom_series_train_slice_wise_with_fedavg(tmp_path):
    from privmed.data.dicom_deid import deidentify_tree
    from privmed.data.dicom_keys import pseudo_patient

    src = write_dicom_set(tmp_path / "ct")
    key = tmp_path / "site.key"
    key.write_bytes(b"s" * 32)
    key.chmod(0o600)  # a key others can read is refused
    summary = deidentify_tree(src, tmp_path / "deid", key_file=key)
    assert summary.written == 48 and [p for p, _ in summary.skipped] == ["labels.csv"]
    # the site relabels by pseudonym: the de-identified tree holds no original id
    labels = [f"{pseudo_patient(key.read_bytes(), f'pat{i}')},{i % 2}" for i in range(8)]
    (tmp_path / "deid" / "labels.csv").write_text("patient_id,label\n" + "\n".join(labels) + "\n")
    res = train(f"dicom:{tmp_path / 'deid'}?slices=axial", tmp_path, "--protocol", "fedavg")
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "runs" / "own" / "result.json").read_text())
    assert result["dataset"]["image_shape"] == [1, 8, 8]
    assert sum(d["patients"] for d in result["dataset"]["distribution"]) == 8  # 48 slices of 8 patients


def test_nifti_slices_train_centralised(tmp_path):
    src = write_nifti_set(tmp_path / "mr")
    res = train(f"nifti:{src}?slices=axial", tmp_path, "--protocol", "centralised")
    assert res.exit_code == 0, res.output


def test_volumes_without_slices_say_what_to_do(tmp_path):
    src = write_nifti_set(tmp_path / "mr", n_patients=4)
    res = train(f"nifti:{src}", tmp_path, "--protocol", "centralised")
    assert res.exit_code == 2 and "3-D volumes" in res.output and "?slices=axial" in res.output
