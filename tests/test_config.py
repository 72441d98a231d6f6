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
    assert paper["matching_nets"] == {"variants": ["matching_net", "matching_net_fce"], "iterations": 75000,
                                      "val_every": 1000, "val_episodes": 100, "keep": "last", "seeds": [0]}
    defaults = validate_config({"dataset": {"name": "d", "format": "demo"},
                                "settings": {"5w1s": {"n_way": 5, "k_shot": 1, "val_every": 1000}}}, SCHEMA)
    assert defaults["baselines"] == paper["baselines"]  # the defaults are the original code's
    assert len(paper["baselines"]["finetune"]["lrs"]) * len(paper["baselines"]["finetune"]["decays"]) == 42


@pytest.mark.parametrize("name", ["config.yaml", "reference-cpu.yaml"])
def test_budgets_are_the_papers_times_one_factor(name):
    """The demo and the reference run keep the paper's ratio of meta-training to pre-training: those
    budgets are the paper's (75,000 / 50,000 episodes, 30,000 steps) times the config's budget_fraction,
    and the Matching Networks' 75,000 too: every learned method at one fraction of its budget."""
    raw = yaml.safe_load((REPO / "config" / name).read_text())
    assert all("iterations" not in s for s in raw["settings"].values())
    assert "steps" not in raw["baselines"].get("pretrain", {})
    fraction = raw["budget_fraction"]
    assert 0 < fraction < 1
    config = shipped(name)
    for setting in config["settings"].values():
        assert setting["iterations"] == round(fraction * (75000 if setting["k_shot"] == 1 else 50000))
    assert config["baselines"]["pretrain"]["steps"] == round(fraction * 30000)
    assert "iterations" not in raw.get("matching_nets", {})
    assert config["matching_nets"]["iterations"] == round(fraction * 75000)


def test_schema_knows_every_deviation():
    schema = yaml.safe_load(SCHEMA.read_text())
    from reproml.models.matching_net import DEVIATIONS as MATCHING_NET_DEVIATIONS

    assert set(schema["properties"]["deviations"]["items"]["enum"]) == set(DEVIATIONS) | set(MATCHING_NET_DEVIATIONS)


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


def test_the_schema_and_the_cli_share_the_originals_defaults():
    """Each default is defined once in the package (reproml.settings, reproml.methods.finetune); the schema,
    which must state its own, agrees with it, and so does every CLI option that has it."""
    from reproml.cli import parser
    from reproml.methods.finetune import GRID_DECAYS, GRID_EPISODES, GRID_LRS
    from reproml.settings import (GRAD_CLIP, META_LR, N_QUERY, PAPER_TEST_EPISODES, PAPER_VALIDATION, PRETRAIN_BATCH,
                                  TaskSettings)

    schema = yaml.safe_load(SCHEMA.read_text())["properties"]
    setting = schema["settings"]["additionalProperties"]["properties"]
    assert (setting["n_query"]["default"], setting["lr"]["default"], setting["grad_clip"]["default"]) == \
        (N_QUERY, META_LR, GRAD_CLIP)
    assert setting["val_episodes"]["default"] == PAPER_VALIDATION["episodes"]
    assert schema["test_episodes"]["default"] == PAPER_TEST_EPISODES
    pretrain = schema["baselines"]["properties"]["pretrain"]["properties"]
    assert (pretrain["batch_size"]["default"], pretrain["lr"]["default"], pretrain["val_every"]["default"],
            pretrain["val_episodes"]["default"]) == (PRETRAIN_BATCH, META_LR, PAPER_VALIDATION["every"],
                                                      PAPER_VALIDATION["episodes"])
    finetune = schema["baselines"]["properties"]["finetune"]["properties"]
    assert (tuple(finetune["lrs"]["default"]), tuple(finetune["decays"]["default"]),
            finetune["val_episodes"]["default"]) == (GRID_LRS, GRID_DECAYS, GRID_EPISODES)
    settings = TaskSettings(5, 1, 84)
    assert (settings.n_query, settings.lr, settings.grad_clip) == (N_QUERY, META_LR, GRAD_CLIP)
    def default(command, option):
        required = ["--checkpoint", "c", "--n-way", "5", "--k-shot", "1"] if command == "select-finetune" else []
        return getattr(parser().parse_args([command, "--data", "d", "--out", "o", *required]), option)
    assert default("train", "n_query") == default("select-finetune", "n_query") == N_QUERY
    assert (default("train", "lr"), default("train", "grad_clip"), default("pretrain", "lr")) == (META_LR, GRAD_CLIP, META_LR)
    assert default("train", "val_episodes") == default("pretrain", "val_episodes") == PAPER_VALIDATION["episodes"]
    assert default("evaluate", "episodes") == PAPER_TEST_EPISODES and default("pretrain", "batch_size") == PRETRAIN_BATCH
    assert default("select-finetune", "episodes") == GRID_EPISODES
    matching = schema["matching_nets"]["properties"]
    mn = parser().parse_args(["train-matching-net", "--data", "d", "--variant", "matching_net", "--out", "o"])
    assert (matching["val_every"]["default"], matching["val_episodes"]["default"], matching["keep"]["default"]) == \
        (mn.val_every, mn.val_episodes, mn.keep) == (PAPER_VALIDATION["every"], PAPER_VALIDATION["episodes"], "last")
    assert default("select-finetune", "lrs") == ",".join(map(str, GRID_LRS))
