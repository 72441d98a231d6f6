"""What a training run keeps between validations, shared by meta-training and pre-training:
the training loss, accuracy and seconds since the last validation, the validation curve, and
the best validation so far. All of it is plain data, saved in last.pt to resume."""

import csv
import io
import sys
from pathlib import Path

import torch

from reproml.atomic import save_torch, write_text
from reproml.errors import UserError
from reproml.files import load_torch, read_frame, read_json

# What every last.pt holds (meta-training adds the meta-learner and its optimiser, pre-training the network).
RESUME_KEYS = {"run_config", "state", "best"}

CURVE_COLUMNS = ["iteration", "train_loss", "train_acc", "val_acc", "val_ci95"]


def check_schedule(length_option, length, val_every, val_episodes):
    if length < 1 or val_every < 1:
        raise UserError(f"{length_option} {length} and --val-every {val_every}: both must be at least 1")
    if val_episodes < 2:
        raise UserError(f"--val-episodes {val_episodes}: need at least 2 for a confidence interval")


def load_last(out, run_config, length_option, length, device):
    """The contents of `out`/last.pt if an earlier run with the same configuration left one, else None.
    The length is not part of the configuration: a finished run can be extended."""
    last = out / "last.pt"
    if not last.exists():
        return None
    saved = load_torch(last, "run state to resume from")
    if not isinstance(saved, dict) or not RESUME_KEYS <= saved.keys() or not isinstance(saved["run_config"], dict):
        raise UserError(f"{last}: not the run state of a reproml training run; delete it (or the folder) to start "
                        "afresh, or use another --out")
    saved = to_device(saved, device)
    if saved["run_config"] != run_config:
        differ = sorted(key for key in saved["run_config"].keys() | run_config.keys()
                        if saved["run_config"].get(key) != run_config.get(key))
        raise UserError(f"{out}: holds a run with other settings ({', '.join(differ)}); use another --out or "
                        "delete that folder")
    done = saved["state"]["iteration"]
    if done > length:
        raise UserError(f"{out}: already trained for {done} iterations, more than {length_option} {length}; "
                        "use another --out")
    print(f"{out}: resuming from iteration {done}", file=sys.stderr, flush=True)
    return saved


def to_device(value, device):
    """A checkpoint's tensors (nested in dicts, lists and tuples) moved to `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


def new_state():
    return {"iteration": 0, "curve": [], "best_val_acc": None, "best_iteration": None, "train_seconds": 0.0,
            "window": {"losses": [], "accs": [], "seconds": 0.0}}


def record_step(state, loss, accuracy, seconds):
    window = state["window"]
    window["losses"].append(loss)
    window["accs"].append(accuracy)
    window["seconds"] += seconds


def record_validation(state, iteration, val, extra=None):
    """Add a curve row for `iteration` (training means since the last validation, then the
    validation result, then any `extra` columns) and return whether it is the best validation so far."""
    window = state["window"]
    state["curve"].append({"iteration": iteration, "train_loss": sum(window["losses"]) / len(window["losses"]),
                           "train_acc": sum(window["accs"]) / len(window["accs"]), "val_acc": val["acc_mean"],
                           "val_ci95": val["ci95"], **(extra or {})})
    state["train_seconds"] += window["seconds"]
    state["window"] = {"losses": [], "accs": [], "seconds": 0.0}
    state["iteration"] = iteration
    improved = state["best_val_acc"] is None or val["acc_mean"] > state["best_val_acc"]
    if improved:
        state["best_val_acc"], state["best_iteration"] = val["acc_mean"], iteration
    return improved


def write_outputs(out, state, best):
    """best.pt and curve.csv, written after every validation so that they can be read while training runs."""
    save_torch(out / "best.pt", best)
    write_text(out / "curve.csv", curve_csv(state["curve"]))


def read_run(path, keys=("setting", "seed", "settings", "best_iteration", "best_val_acc")):
    """A training run's run.json, checked to be one."""
    return read_json(path, "run.json of a training run", keys)


def read_curve(run_file):
    """The curve.csv beside a run.json, as a DataFrame."""
    return read_frame(Path(run_file).parent / "curve.csv", "validation curve", CURVE_COLUMNS)


def curve_csv(rows):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, list(dict.fromkeys(CURVE_COLUMNS + [k for row in rows for k in row])),
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()
