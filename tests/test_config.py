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


def shipped(name):
    """A shipped config, validated; a real dataset's folder is replaced by the demo generator, so that
    configs for data the checkout does not hold (config/paper.yaml) validate too."""
    config = yaml.safe_load((REPO / "config" / name).read_text())
    if config["dataset"]["format"] != "demo":
        config["dataset"] = {"name": config["dataset"]["name"], "format": "demo"}
    return validate_config(config, SCHEMA)


def test_shipped_configs_are_valid_and_get_defaults():
    for name in ("config.yaml", "smoke.yaml", "smoke-analyses.yaml", "paper.yaml", "reference-cpu.yaml"):
        config = shipped(name)
        assert config["eval_seed"] == 0 and config["deviations"] == []
        assert all(s["lr"] == 0.001 and s["grad_clip"] == 0.25 for s in config["settings"].values())
        assert config["baselines"]["pretrain"]["lr"] == 0.001 and config["baselines"]["finetune"]["decays"]
    paper = shipped("paper.yaml")
    assert [s["iterations"] for s in paper["settings"].values()] == [75000, 50000, 50000, 50000]
    assert paper["test_episodes"] == 600 and paper["baselines"]["seeds"] == paper["seeds"] == [0]
    defaults = validate_config({"dataset": {"name": "d", "format": "demo"},
                                "settings": {"5w1s": {"n_way": 5, "k_shot": 1, "val_every": 1000}}}, SCHEMA)
    assert defaults["baselines"] == paper["baselines"]  # the defaults are the original code's
    assert len(paper["baselines"]["finetune"]["lrs"]) * len(paper["baselines"]["finetune"]["decays"]) == 42


@pytest.mark.parametrize("name", ["config.yaml", "reference-cpu.yaml"])
def test_budgets_are_the_papers_times_one_factor(name):
    """The demo and the reference run keep the paper's ratio of meta-training to pre-training: every
    budget is the paper's (75,000 / 50,000 episodes, 30,000 steps) times the config's budget_fraction."""
    raw = yaml.safe_load((REPO / "config" / name).read_text())
    assert all("iterations" not in s for s in raw["settings"].values())
    assert "steps" not in raw["baselines"].get("pretrain", {})
    fraction = raw["budget_fraction"]
    assert 0 < fraction < 1
    config = shipped(name)
    for setting in config["settings"].values():
        assert setting["iterations"] == round(fraction * (75000 if setting["k_shot"] == 1 else 50000))
    assert config["baselines"]["pretrain"]["steps"] == round(fraction * 30000)


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
