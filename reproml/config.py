"""Validation of the pipeline's configuration against workflow/schemas/config.schema.yaml.

The Snakefile calls `validate_config` before building any job; a mistake stops the run with
one line naming the key, e.g. `config: settings.5w1s.k_shot: -1 is less than the minimum of 1`.
"""

from pathlib import Path

import jsonschema
import yaml

from reproml.errors import UserError
from reproml.files import read_yaml
from reproml.settings import PAPER_MATCHING_NET_EPISODES, PAPER_PRETRAIN_STEPS, paper_iterations, scaled_budget


def key_path(path):
    return ".".join(str(part) for part in path) or "(top level)"


def describe_error(error):
    where = key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        allowed = ", ".join(error.schema.get("properties", {}))
        return f"config: unknown key {'.'.join([*map(str, error.absolute_path), unknown[0]])!r}; " \
               f"expected one of {allowed}"
    if error.validator in ("anyOf", "pattern") and "description" in error.schema:
        return f"config: {where}: {error.instance!r} is not valid; expected {error.schema['description']}"
    return f"config: {where}: {error.message}"


def fill_defaults(value, schema, root):
    """Insert every schema default that the config leaves out (nested mappings, list items and
    `$ref`s to the schema's definitions included)."""
    if "$ref" in schema:
        schema = root["definitions"][schema["$ref"].removeprefix("#/definitions/")]
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            fill_defaults(item, schema["items"], root)
    if not isinstance(value, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in value and "default" in sub:
            value[key] = sub["default"]
        if key in value:
            fill_defaults(value[key], sub, root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key in set(value) - set(schema.get("properties", {})):
            fill_defaults(value[key], extra, root)


def check_dataset(dataset, key):
    if dataset["format"] != "demo":
        if "root" not in dataset:
            raise UserError(f"config: {key}.root is missing; format {dataset['format']!r} reads a folder")
        if not Path(dataset["root"]).is_dir():
            raise UserError(f"config: {key}.root: {dataset['root']} does not exist")


def fill_budgets(config):
    """The training budgets a config leaves out: the paper's times `budget_fraction` (one factor for
    meta-training, pre-training and Matching Networks alike, so the methods keep the paper's ratio);
    the baselines' and the Matching Networks' seeds: the run's."""
    fraction = config["budget_fraction"]
    for setting in config["settings"].values():
        setting.setdefault("iterations", scaled_budget(fraction, paper_iterations(setting["k_shot"])))
    config["baselines"]["pretrain"].setdefault("steps", scaled_budget(fraction, PAPER_PRETRAIN_STEPS))
    config["baselines"].setdefault("seeds", list(config["seeds"]))
    config["matching_nets"].setdefault("iterations", scaled_budget(fraction, PAPER_MATCHING_NET_EPISODES))
    config["matching_nets"].setdefault("seeds", list(config["seeds"]))


# JSON Schema counts 4.0 as an integer; the jobs' command lines would not.
Validator = jsonschema.validators.extend(jsonschema.Draft7Validator, type_checker=jsonschema.Draft7Validator.TYPE_CHECKER.redefine(
    "integer", lambda checker, value: isinstance(value, int) and not isinstance(value, bool)))


def check_config_files(paths):
    """Read each config file as Snakemake will, but refuse what Snakemake would let pass silently: a key
    given twice in one mapping (the last would win)."""
    for path in paths:
        try:
            read_yaml(path, "config file")
        except UserError as exc:
            raise UserError(f"config: {exc}") from None


def validate_config(config, schema_path):
    """Check `config` in place, fill its defaults, and return it; raise UserError on a mistake."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    error = jsonschema.exceptions.best_match(Validator(schema).iter_errors(config))
    if error is not None:
        raise UserError(describe_error(error))
    fill_defaults(config, schema, schema)
    fill_budgets(config)
    if "publish" in config and Path(config["publish"]).parts[0] == "results":
        raise UserError(f"config: publish: {config['publish']!r} is inside results/, the pipeline's own outputs; "
                        "expected a folder of its own, such as reports/NAME")
    check_dataset(config["dataset"], "dataset")
    names = [config["dataset"]["name"]]
    for i, dataset in enumerate(config["transfer"]):
        check_dataset(dataset, f"transfer.{i}")
        if dataset["name"] in names:
            raise UserError(f"config: transfer.{i}.name: {dataset['name']!r} is already the name of "
                            f"{'the training dataset' if dataset['name'] == names[0] else 'another transfer dataset'}")
        names.append(dataset["name"])
    pretrain = config["baselines"]["pretrain"]
    if pretrain["val_every"] > pretrain["steps"]:
        raise UserError(f"config: baselines.pretrain.val_every: {pretrain['val_every']} is more than its "
                        f"steps ({pretrain['steps']})")
    matching = config["matching_nets"]
    if matching["variants"] and matching["val_every"] > matching["iterations"]:
        raise UserError(f"config: matching_nets.val_every: {matching['val_every']} is more than its "
                        f"iterations ({matching['iterations']})")
    for name, setting in config["settings"].items():
        if setting["val_every"] > setting["iterations"]:
            raise UserError(f"config: settings.{name}.val_every: {setting['val_every']} is more than its "
                            f"iterations ({setting['iterations']})")
        needed = setting["k_shot"] + setting["n_query"]
        if setting["image_pool"] != "all" and setting["image_pool"] < needed:
            raise UserError(f"config: settings.{name}.image_pool: {setting['image_pool']} images per class are "
                            f"fewer than one episode takes (k_shot + n_query = {needed})")
    return config
