"""Validation of the pipeline's config, without running Snakemake."""

import copy
from pathlib import Path

import pytest
import yaml

from reproml.config import validate_config
from reproml.errors import UserError
from reproml.settings import DEVIATIONS

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
SMOKE = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())


def check(change):
    config = copy.deepcopy(SMOKE)
    change(config)
    return validate_config(config, SCHEMA)


def test_shipped_configs_are_valid_and_get_defaults():
    for name in ("config.yaml", "smoke.yaml", "smoke-analyses.yaml"):
        config = validate_config(yaml.safe_load((REPO / "config" / name).read_text()), SCHEMA)
        assert config["eval_seed"] == 0 and config["deviations"] == []
        assert all(s["lr"] == 0.001 and s["grad_clip"] == 0.25 for s in config["settings"].values())
        assert config["baselines"]["pretrain"]["lr"] == 0.001 and config["baselines"]["finetune"]["decays"]
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    assert paper["settings"]["5w1s"]["iterations"] == 75000 and paper["test_episodes"] == 600
    baselines = validate_config({"dataset": {"name": "d", "format": "demo"}, "settings": paper["settings"]},
                                SCHEMA)["baselines"]
    assert baselines == {"enabled": True, **paper["baselines"]}  # the defaults are the original code's
    assert len(baselines["finetune"]["lrs"]) * len(baselines["finetune"]["decays"]) == 42


def test_schema_knows_every_deviation():
    schema = yaml.safe_load(SCHEMA.read_text())
    assert set(schema["properties"]["deviations"]["items"]["enum"]) == set(DEVIATIONS)


def merge(base, over):
    for key, value in over.items():
        if isinstance(value, dict) and value and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value


def documented_mistakes():
    """(YAML, message) rows of the table in config/README.md, "Common mistakes"."""
    text = (REPO / "config" / "README.md").read_text().split("## Common mistakes", 1)[1]
    rows = [line.split("`")[1::2] for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) >= 15 and all(len(row) == 2 for row in rows)
    return rows


@pytest.mark.parametrize("mistake, message", documented_mistakes())
def test_documented_mistakes_get_their_message(mistake, message):
    with pytest.raises(UserError) as error:
        check(lambda config: merge(config, yaml.safe_load(mistake)))
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)
