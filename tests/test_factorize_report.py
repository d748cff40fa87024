"""nlinit.factorize's report: markdown, JSON / CSV round trips, the recorded settings."""

from __future__ import annotations

import csv
import json

import pytest
from nets import (
    SmallNet,
    seeded_model,
)

import nlinit
from nlinit import FactorizeReport

pytestmark = [
    pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning"),
    pytest.mark.filterwarnings("ignore:skipped 1 grouped/depthwise conv:UserWarning"),
]

# ---------------------------------------------------------------------------------------------------------
# Report


@pytest.fixture(scope="module")
def small_report() -> FactorizeReport:
    model = seeded_model(SmallNet)
    return nlinit.factorize(model, rank=4, init="relu-svd", activation={"fc1": "relu"})


def test_report_markdown(small_report):
    md = small_report.to_markdown()
    for layer in small_report.layers:
        assert f"| {layer.name} |" in md
    assert small_report.summary() in md
    assert md.count("\n| ") == len(small_report.layers)  # one row per layer after header and rule
    assert small_report.summary().startswith("factorized 3 of 6 layers with init='relu-svd'")


def test_report_save_and_round_trip(small_report, tmp_path):
    js = small_report.save(tmp_path / "r.json")
    back = FactorizeReport.from_dict(json.loads(js.read_text()))
    assert back == small_report
    assert back.to_markdown() == small_report.to_markdown()

    with small_report.save(tmp_path / "sub" / "r.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["name"] for row in rows] == [layer.name for layer in small_report.layers]
    assert [row["status"] for row in rows] == [layer.status for layer in small_report.layers]

    md = small_report.save(tmp_path / "r.md")
    assert md.read_text() == small_report.to_markdown()


def test_report_config_records_settings(small_report):
    assert small_report.config["init"] == "relu-svd"
    assert small_report.config["rank"] == 4 and small_report.config["rank_scale"] is None
    assert small_report.params_after < small_report.params_before
