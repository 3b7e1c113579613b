"""`privmed bench --data 3d`: the default suite's protocol rows, plus P3SGD, on the phantom's volumes."""

import pytest

from privmed.bench.suite import VOLUME_DATA, VOLUME_ROUNDS, default_suite, suite_rows
from privmed.errors import PrivmedError


def test_the_3d_rows_are_the_default_rows_and_p3sgd_on_volumes():
    rows = suite_rows("default", data="3d")
    flat = default_suite()
    assert [cfg.protocol for _, cfg in rows] == [cfg.protocol for _, cfg in flat] + ["centralised"]
    assert {cfg.privacy.get("mechanism") for _, cfg in rows} >= {"secagg", "dp-sgd", "p3sgd"}
    assert all(cfg.data == VOLUME_DATA and "volume=1" in cfg.data.dataset for _, cfg in rows)
    assert all(cfg.train.rounds == VOLUME_ROUNDS and cfg.run_name.endswith("-3d") for _, cfg in rows)
    assert len({cfg.run_name for _, cfg in rows}) == len(rows)
    assert all(cfg.data.dataset == "phantom" for _, cfg in suite_rows("default"))


def test_3d_is_refused_for_other_suites_and_unknown_data_named():
    with pytest.raises(PrivmedError, match="--data 3d runs the default suite"):
        suite_rows("review", data="3d")
    with pytest.raises(PrivmedError, match="2d, 3d"):
        suite_rows("default", data="4d")
