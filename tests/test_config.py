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
    for name in ("config.yaml", "smoke.yaml"):
        config = validate_config(yaml.safe_load((REPO / "config" / name).read_text()), SCHEMA)
        assert config["eval_seed"] == 0 and config["deviations"] == []
        assert all(s["lr"] == 0.001 and s["grad_clip"] == 0.25 for s in config["settings"].values())
        assert config["baselines"]["pretrain"]["lr"] == 0.001 and config["baselines"]["finetune"]["decays"]
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    assert paper["settings"]["5w1s"]["iterations"] == 75000 and paper["test_episodes"] == 600
    baselines = validate_config({"dataset": {"name": "d", "format": "demo"}, "settings": paper["settings"]},
                                SCHEMA)["baselines"]
    assert baselines == paper["baselines"]  # the defaults are the original code's
    assert len(baselines["finetune"]["lrs"]) * len(baselines["finetune"]["decays"]) == 42


def test_schema_knows_every_deviation():
    schema = yaml.safe_load(SCHEMA.read_text())
    assert set(schema["properties"]["deviations"]["items"]["enum"]) == set(DEVIATIONS)


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(colour="red"), "config: unknown key 'colour'"),
    (lambda c: c["settings"]["5w1s"].update(shots=3), "config: unknown key 'settings.5w1s.shots'"),
    (lambda c: c["settings"]["5w1s"].update(k_shot=-1), "config: settings.5w1s.k_shot: -1 is less than the minimum of 1"),
    (lambda c: c["settings"]["5w1s"].pop("iterations"), "config: settings.5w1s: 'iterations' is a required property"),
    (lambda c: c["dataset"].update(format="hdf5"), "config: dataset.format: 'hdf5' is not one of"),
    (lambda c: c.update(seeds=[]), "config: seeds: [] should be non-empty"),
    (lambda c: c.update(deviations=["augment"]), "config: deviations.0: 'augment' is not one of"),
    (lambda c: c["dataset"].update(format="ravi"), "config: dataset.root is missing"),
    (lambda c: c["dataset"].update(format="ravi", root="/nowhere"), "config: dataset.root: /nowhere does not exist"),
    (lambda c: c["settings"]["5w1s"].update(val_every=50), "config: settings.5w1s.val_every: 50 is more than"),
    (lambda c: c["baselines"]["pretrain"].update(val_every=50), "config: baselines.pretrain.val_every: 50 is more than"),
    (lambda c: c["baselines"]["finetune"].update(lrs=[0.1, 0]), "config: baselines.finetune.lrs.1: 0 is less than or"),
    (lambda c: c["baselines"].update(augment=True), "config: unknown key 'baselines.augment'"),
])
def test_mistakes_name_the_key(change, message):
    with pytest.raises(UserError) as error:
        check(change)
    assert str(error.value).startswith(message)
