"""`attribution affiliates load FILE` (streams/commands/affiliates.py): reading the file, and what it publishes."""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson
import pytest

from streams.commands.affiliates import load, read_records
from streams.config import Settings
from streams.core.affiliates import parse_affiliates
from tests.unit.core.test_affiliates import ANNA

SAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "affiliates.sample.json"


def test_the_sample_file_is_valid() -> None:
    records = read_records(SAMPLE)
    assert isinstance(records, list)
    valid, errors = parse_affiliates(records)
    assert errors == [] and len(valid) == len(records) >= 6
    assert {a.channel for a in valid} == {"affiliate", "influencer"}
    assert any(a.promo_codes == ("ANNA10",) and a.affiliate_id == "anna_fit" for a in valid)


def test_read_records_says_what_is_wrong_with_the_file(tmp_path: Path) -> None:
    assert "cannot read" in str(read_records(tmp_path / "missing.json"))
    (tmp_path / "broken.json").write_text("[{")
    assert "is not valid JSON" in str(read_records(tmp_path / "broken.json"))
    (tmp_path / "object.json").write_text(orjson.dumps(ANNA).decode())
    assert "expected a JSON list of affiliate records, got dict" in str(read_records(tmp_path / "object.json"))


def test_load_publishes_nothing_and_fails_when_every_record_is_bad(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(orjson.dumps([{"affiliate_id": "x"}, {**ANNA, "commission_rate": 2}]).decode())
    # no broker is touched: there is nothing valid to publish
    assert load(Settings(kafka_bootstrap="127.0.0.1:1"), argparse.Namespace(file=str(path))) == 1
    out, err = capsys.readouterr()
    assert "published 0 affiliate record(s) to topic affiliates; 2 rejected" in out
    assert f"{path}: record 0: missing required field(s): channel, commission_rate" in err
    assert f"{path}: record 1: commission_rate must be smaller than or equal to 1, got 2" in err


def test_load_exits_2_on_a_file_that_is_not_a_json_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.json"
    path.write_text("{}")
    assert load(Settings(kafka_bootstrap="127.0.0.1:1"), argparse.Namespace(file=str(path))) == 2
    assert "expected a JSON list" in capsys.readouterr().err
