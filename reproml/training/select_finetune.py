"""Baseline-finetune's hyperparameters, chosen as the original code chose them: every (lr, decay)
of the grid is tried on the same meta-validation episodes; the best mean accuracy wins (the
first in grid order on a tie).

Files in the output folder: grid.csv (lr, decay, val_acc, val_ci95; a row per finished grid
point, so that an interrupted search resumes) and choice.json (the chosen point, read by
'reproml evaluate --method baseline_finetune').
"""

import sys
from pathlib import Path

from tqdm import tqdm

from reproml.atomic import make_dir, write_json, write_text
from reproml.data.episodes import EpisodeSampler
from reproml.data.prepared import load_split, read_manifest
from reproml.errors import UserError
from reproml.files import read_csv
from reproml.evaluation.evaluate import check_image_size, episode_accuracies
from reproml.methods.finetune import UPDATES, finetune_classifier
from reproml.models.pretrained import load_pretrained
from reproml.settings import resolve_device
from reproml.statistics import summarize

GRID_COLUMNS = ["lr", "decay", "val_acc", "val_ci95"]


def read_grid(path, lrs, decays):
    """The finished rows of an earlier search with the same grid, or [] if there is none."""
    if not path.exists():
        return []
    try:
        rows = [{k: float(row[k]) for k in GRID_COLUMNS} for row in read_csv(path, "fine-tuning grid", GRID_COLUMNS)]
    except ValueError:
        raise UserError(f"{path}: not a fine-tuning grid (a value is not a number); delete it to search again") from None
    grid = [(lr, decay) for lr in lrs for decay in decays]
    if [(r["lr"], r["decay"]) for r in rows] != grid[:len(rows)]:
        raise UserError(f"{path}: holds a search over another grid; use another --out or delete it")
    return rows


def grid_csv(rows):
    lines = [",".join(GRID_COLUMNS)] + [f"{r['lr']!r},{r['decay']!r},{r['val_acc']:.6f},{r['val_ci95']:.6f}"
                                        for r in rows]
    return "\n".join(lines) + "\n"


def select_finetune(data, checkpoint, n_way, k_shot, n_query, lrs, decays, episodes, seed, out, device="auto",
                    progress=True):
    if episodes < 2:
        raise UserError(f"--episodes {episodes}: need at least 2 for a confidence interval")
    if not lrs or not decays or min(lrs) <= 0 or min(decays) < 0:
        raise UserError("--lrs must be positive and --decays non-negative, at least one of each")
    device = resolve_device(device)
    manifest = read_manifest(data)
    pretrained, ckpt = load_pretrained(checkpoint, device)
    check_image_size(checkpoint, ckpt["image_size"], manifest, data)
    sampler = EpisodeSampler(load_split(data, "val", device), n_way, k_shot, n_query, seed)

    out = Path(out)
    make_dir(out)
    grid_path = out / "grid.csv"
    rows = read_grid(grid_path, lrs, decays)
    if rows:
        print(f"{out}: resuming after {len(rows)} grid points", file=sys.stderr, flush=True)
    grid = [(lr, decay) for lr in lrs for decay in decays]
    for lr, decay in tqdm(grid[len(rows):], desc="select-finetune", unit="point", disable=not progress):
        classify = finetune_classifier(pretrained, n_way, lr, decay, seed)
        val = summarize(episode_accuracies(classify, sampler, episodes, device, desc=f"lr {lr:g} decay {decay:g}",
                                           progress=progress))
        rows.append({"lr": lr, "decay": decay, "val_acc": val["acc_mean"], "val_ci95": val["ci95"]})
        write_text(grid_path, grid_csv(rows))
    best = max(rows, key=lambda r: r["val_acc"])  # max keeps the first of equals
    choice = {**best, "episodes": episodes, "seed": seed, "n_way": n_way, "k_shot": k_shot, "n_query": n_query,
              "updates": UPDATES, "checkpoint": str(checkpoint), "grid_points": len(rows)}
    write_json(out / "choice.json", choice)
    return choice
