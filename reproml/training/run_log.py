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


def flatten(config, prefix=""):
    """A run configuration's settings as {dotted key: value}, nested dicts opened."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def first_difference(old, new):
    """The first setting in which two run configurations differ, as 'KEY OLD (this run: NEW)'."""
    old, new = flatten(old), flatten(new)
    key = next(k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k))
    return f"{key} {old.get(key, '(unset)')} (this run: {new.get(key, '(unset)')})"


def load_last(out, run_config, schedule, device, replace=False, options=None):
    """What `out`/last.pt gives this run: (the saved state to continue from, or None to train afresh;
    why it trains afresh in the place of another run, or None).

    A run's identity is `run_config`, everything that shapes what it computes; its length is not part
    of it. An unfinished run of the same identity is resumed; a finished one is extended where that
    equals training the longer run afresh (it ended on the validation schedule). A finished run of
    the same identity and length is not trained again: its outputs are written anew (for `options`,
    such as which model to keep, that changed), unless `replace` asks for a rerun. Anything else (another
    identity, a length below what the folder holds) is refused in one line naming the difference,
    deleting nothing, or with `replace` (the pipeline's choice: a rerun means retraining) trained afresh
    in its place, the reason printed and kept in the run's history."""
    length_option, length, val_every = schedule
    last = out / "last.pt"
    if not last.exists():
        return None, None
    saved = load_torch(last, "run state to resume from")
    if not isinstance(saved, dict) or not RESUME_KEYS <= saved.keys() or not isinstance(saved["run_config"], dict):
        raise UserError(f"{last}: not the run state of a reproml training run; delete it (or the folder) to start "
                        "afresh, or use another --out")
    done = saved["state"]["iteration"]
    finished = saved.get("length") == done  # (an interrupted run validated last where it stopped)
    if saved["run_config"] != run_config:
        reason = f"holds a run with {first_difference(saved['run_config'], run_config)}"
    elif length == done:
        if replace and saved.get("options") == options:
            reason = f"holds this run, finished at {done}, and a rerun was asked for"
        else:
            print(f"{out}: finished at {done}; writing its outputs again", file=sys.stderr, flush=True)
            if saved.get("options") != options:  # so that a later rerun of these options retrains
                saved["options"] = options
                save_torch(last, saved)
            return to_device(saved, device), None
    elif done < length and (not finished or done % val_every == 0):
        how = "extending a finished run" if finished else "resuming"
        print(f"{out}: {how} from iteration {done}", file=sys.stderr, flush=True)
        saved["state"].setdefault("history", []).append({"how": "extended" if finished else "resumed", "at": done})
        return to_device(saved, device), None
    elif done > length:
        reason = f"already trained for {done} iterations, more than {length_option} {length}"
    else:
        reason = (f"holds a run finished at {done}, off the every-{val_every} validation schedule, so that "
                  f"extending it to {length_option} {length} would not equal training that afresh")
    if not replace:
        raise UserError(f"{out}: {reason}; use another --out, or --replace to train afresh in its place")
    print(f"{out}: training afresh: it {reason}", file=sys.stderr, flush=True)
    return None, reason


def last_state(run_config, state, best, length, options=None, **payload):
    """The contents of last.pt: what `load_last` reads back, and the method's own `payload`."""
    return {"run_config": run_config, "state": state, "best": best, "length": length, "options": options, **payload}


def history_text(history):
    """A run's history in a few words: 'in one go', or its restart, resumptions and extensions."""
    words = [("retrained" if event.get("reason") else "afresh") if event["how"] == "afresh"
             else f"{event['how']} at {event['at']:,}" for event in history or []]
    return "in one go" if words in ([], ["afresh"]) else ", then ".join(words)


def restart_reason(run):
    """Why a run (its run.json) was trained afresh in the place of another, or None."""
    history = run.get("history") or [{}]
    return history[0].get("reason")


def to_device(value, device):
    """A checkpoint's tensors (nested in dicts, lists and tuples) moved to `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


def new_state(restart_reason=None):
    """A run's state at iteration 0; its history says why it started afresh in the place of another run."""
    start = {"how": "afresh", "at": 0, **({"reason": restart_reason} if restart_reason else {})}
    return {"iteration": 0, "curve": [], "best_val_acc": None, "best_iteration": None, "train_seconds": 0.0,
            "window": {"losses": [], "accs": [], "seconds": 0.0}, "history": [start]}


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
