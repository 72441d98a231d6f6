"""The `reproml` command line: describe, prepare, train, pretrain, train-matching-net, select-finetune, evaluate,
report, publish, bench, selfcheck.

A mistake in the input (a path, a file, a value) ends with one line on stderr naming the
culprit and exit status 2; an interruption (Ctrl-C, or SIGTERM) with status 130 (143) and a hint
to rerun (training resumes). A command that writes an --out folder holds it while it runs.
"""

import argparse
import importlib.metadata
import json
import signal
import sys

from reproml.allocator import keep_freed_memory
from reproml.atomic import exclusive
from reproml.data.sources import FORMATS
from reproml.errors import UserError
from reproml.evaluation.evaluate import METHODS
from reproml.methods.finetune import GRID_DECAYS, GRID_EPISODES, GRID_LRS
from reproml.models.matching_net import DEVIATIONS as MATCHING_NET_DEVIATIONS, VARIANTS as MATCHING_NET_VARIANTS
from reproml.training.matching_train import KEEP as MATCHING_NET_KEEP
from reproml.settings import (DEVIATIONS, FILTERS, GRAD_CLIP, META_LR, N_QUERY, PAPER_MATCHING_NET_EPISODES,
                              PAPER_PRETRAIN_STEPS, PAPER_TEST_EPISODES, PAPER_VALIDATION, PRETRAIN_BATCH,
                              README_COMMAND, paper_iterations)


def describe(args):
    from reproml.models.learner import Learner, LearnerSpec
    from reproml.models.meta_learner import MetaLearnerLSTM

    learner = Learner(LearnerSpec(args.n_way, args.image_size, args.filters))
    meta_layers = MetaLearnerLSTM(learner.n_params).layer_sizes()
    print(json.dumps({
        "learner": {"n_way": args.n_way, "image_size": args.image_size, "filters": args.filters,
                    "parameters": learner.n_params, "per_layer": learner.layer_sizes()},
        "meta_learner": {"per_layer": meta_layers, "parameters": sum(meta_layers.values())},
    }, indent=2))


def prepare(args):
    from reproml.data.prepared import prepare

    if args.format != "demo" and args.root is None:
        raise UserError(f"--format {args.format} needs --root (the dataset folder)")
    manifest = prepare(format=args.format, root=args.root, image_size=args.image_size, out=args.out, name=args.name,
                       seed=args.seed, images_per_class=args.images_per_class, progress=not args.quiet)
    for split, info in manifest["splits"].items():
        print(f"{split}: {info['classes']} classes, {info['images']} images")
    print(f"wrote {args.out} ({args.image_size}x{args.image_size}, dataset sha256 {manifest['dataset_sha256'][:12]})")


def train(args):
    from reproml.data.prepared import read_manifest
    from reproml.settings import TaskSettings
    from reproml.training.meta_train import train

    settings = TaskSettings(n_way=args.n_way, k_shot=args.k_shot, image_size=read_manifest(args.data)["image_size"],
                            n_query=args.n_query, batch_size=args.batch_size, epochs=args.epochs,
                            bn_momentum=args.bn_momentum, filters=args.filters, lr=args.lr,
                            grad_clip=args.grad_clip, deviations=tuple(args.deviation))
    summary = train(data=args.data, settings=settings, iterations=args.iterations or paper_iterations(args.k_shot),
                    val_every=args.val_every, val_episodes=args.val_episodes, seed=args.seed, out=args.out,
                    device=args.device, label=args.label, image_pool=args.image_pool, progress=not args.quiet,
                    replace=args.replace)
    print(f"best validation accuracy {summary['best_val_acc']:.2f}% at iteration {summary['best_iteration']}; "
          f"checkpoint {args.out}/best.pt")


def pretrain(args):
    from reproml.training.pretrain import pretrain

    summary = pretrain(data=args.data, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                       val_every=args.val_every, val_episodes=args.val_episodes, seed=args.seed, out=args.out,
                       device=args.device, progress=not args.quiet, replace=args.replace)
    print(f"best validation 1-NN accuracy {summary['best_val_acc']:.2f}% at step {summary['best_step']}; "
          f"network {args.out}/best.pt")


def train_matching_net(args):
    from reproml.training.matching_train import train

    summary = train(data=args.data, variant=args.variant, iterations=args.iterations, val_every=args.val_every,
                    val_episodes=args.val_episodes, seed=args.seed, out=args.out, keep=args.keep,
                    deviations=tuple(args.deviation), device=args.device, progress=not args.quiet,
                    replace=args.replace)
    print(f"{args.variant}: best 5-shot validation accuracy {summary['best_val_acc']:.2f}% at iteration "
          f"{summary['best_iteration']}; kept the {args.keep} ({summary['kept_iteration']}): {args.out}/model.pt")


def select_finetune(args):
    from reproml.training.select_finetune import select_finetune

    choice = select_finetune(data=args.data, checkpoint=args.checkpoint, n_way=args.n_way, k_shot=args.k_shot,
                             n_query=args.n_query, lrs=parse_floats(args.lrs, "--lrs"),
                             decays=parse_floats(args.decays, "--decays"), episodes=args.episodes, seed=args.seed,
                             out=args.out, device=args.device, progress=not args.quiet)
    print(f"chose lr {choice['lr']:g}, decay {choice['decay']:g}: {choice['val_acc']:.2f}% on "
          f"{choice['episodes']} validation episodes; wrote {args.out}/choice.json")


def image_pool(text):
    """--image-pool: 'all' (None) or a positive number of images per class."""
    if text == "all":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 'all' or a positive number of images per class")
    return int(text)


def parse_floats(text, option):
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise UserError(f"{option} {text!r}: expected comma-separated numbers") from None


def evaluate(args):
    from reproml.evaluation.evaluate import evaluate

    s = evaluate(data=args.data, episodes=args.episodes, seed=args.seed, out=args.out, method=args.method,
                 checkpoint=args.checkpoint, device=args.device, split=args.split, n_way=args.n_way,
                 k_shot=args.k_shot, n_query=args.n_query, label=args.label, finetune_choice=args.finetune_choice,
                 train_dataset=args.train_dataset, skip_if_too_small=args.skip_if_too_small,
                 progress=not args.quiet)
    if s.get("skipped"):
        print(f"{s['method']} on {s['eval_dataset']}: skipped: {s['skipped']}")
        return
    print(f"{s['method']}, {s['n_way']}-way {s['k_shot']}-shot, {s['episodes']} {args.split} episodes: "
          f"{s['acc_mean']:.2f}% +- {s['ci95']:.2f} (95% CI)")


def aggregate(args):
    from reproml.report.aggregate import aggregate

    table = aggregate(args.evals, args.published, args.out)
    print(f"wrote {args.out}: {len(table)} rows")


def figures(args):
    from reproml.report.figures import accuracy_figure, curve_figures, gate_figures

    written = curve_figures(args.runs, args.out) + gate_figures(args.gates, args.out)
    if args.summary:
        written.append(accuracy_figure(args.summary, args.published, args.out))
    for path in written:
        print(f"wrote {path}")


def config_argument(args):
    try:
        config = json.loads(args.config_json)
    except json.JSONDecodeError as exc:
        raise UserError(f"--config-json: not valid JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(config, dict) or "settings" not in config:
        raise UserError("--config-json: expected the pipeline's configuration (a JSON object with settings)")
    return config


def report(args):
    from reproml.report.render import render_report

    render_report(templates=args.templates, summary_csv=args.summary, manifest_path=args.manifest, figures=args.figures,
                  benchmarks=args.benchmarks, config=config_argument(args), command=args.rerun_command,
                  run_files=args.runs, eval_files=args.evals, cross_shot_files=args.cross_shot,
                  pretrain_files=args.pretrain_runs,
                  published_path=args.published, out=args.out)
    print(f"wrote {args.out}/report.html and {args.out}/report.tex")


def publish(args):
    from reproml.report.publish import publish

    publish(args.files, args.figures, config_argument(args), args.rerun_command, args.out)
    print(f"wrote {args.out}")


def bench(args):
    from reproml.bench import bench, format_table

    results = bench(args.settings.split(","), args.image_size, args.episodes, args.device)
    print(json.dumps(results, indent=2) if args.json else format_table(results))


def selfcheck(args):
    """Exit status 1 when a path is further from float64 than the bound allows."""
    from reproml.selfcheck import format_table, passed, selfcheck

    progress = (lambda text: None) if args.quiet or args.json else (lambda text: print(text, file=sys.stderr))
    results = selfcheck(args.settings.split(","), args.image_size, args.episodes, args.draws, progress)
    print(json.dumps(results, indent=2) if args.json else format_table(results))
    return 0 if passed(results) else 1


def ranged(kind, minimum=None, maximum=None, above=None):
    """An argparse type: `kind` ('integer' or 'number') with a range, refused in one line otherwise."""
    def parse(text):
        try:
            value = int(text) if kind == "integer" else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind == 'integer' else 'a number'}")
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"{text} is less than the minimum of {minimum}")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"{text} must be more than {above}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{text} is more than the maximum of {maximum}")
        return value
    return parse


COUNT = ranged("integer", minimum=1)           # steps, episodes, shots, threads, ...
SEED = ranged("integer", minimum=0)
WAYS = ranged("integer", minimum=2)
EPISODES = ranged("integer", minimum=2)        # a confidence interval needs two
IMAGE_SIZE = ranged("integer", minimum=16)     # four 2x2 poolings
POSITIVE = ranged("number", above=0)           # learning rates, the gradient clip
MOMENTUM = ranged("number", above=0, maximum=1)


class Parser(argparse.ArgumentParser):
    """argparse, with a mistake reported in one line (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_run_options(p):
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=COUNT, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--out", required=True)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_training_options(p):
    add_run_options(p)
    p.add_argument("--replace", action="store_true",
                   help="train afresh where --out holds a run that cannot be resumed or extended to this one (other "
                   "settings, more iterations than this run asks for) or a finished run of this length (a rerun); without it "
                   "such a folder is refused")


def parser():
    p = Parser(prog="reproml", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"reproml {importlib.metadata.version('reproml')}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    d = sub.add_parser("describe", help="parameter counts of the learner and the meta-learner")
    d.add_argument("--n-way", type=WAYS, default=5)
    d.add_argument("--image-size", type=IMAGE_SIZE, default=84)
    d.add_argument("--filters", type=COUNT, default=FILTERS)
    d.set_defaults(run=describe)

    pr = sub.add_parser("prepare", help="read a dataset source, write resized splits and a manifest")
    pr.add_argument("--format", required=True, choices=FORMATS, help="demo is generated; the others are read from --root")
    pr.add_argument("--root", help="the source folder (not for demo)")
    pr.add_argument("--image-size", type=IMAGE_SIZE, default=84)
    pr.add_argument("--seed", type=SEED, default=0, help="demo only: the generator's seed")
    pr.add_argument("--images-per-class", type=EPISODES, default=600, help="demo only")
    pr.add_argument("--out", required=True)
    pr.add_argument("--name", help="the dataset's name in results (default: the --out folder's name)")
    pr.add_argument("--quiet", action="store_true", help="no progress bars")
    pr.set_defaults(run=prepare)

    t = sub.add_parser("train", help="meta-train a meta-learner LSTM (resumes if --out holds a run)")
    t.add_argument("--data", required=True, help="a folder written by 'reproml prepare'")
    t.add_argument("--n-way", type=WAYS, default=5)
    t.add_argument("--k-shot", type=COUNT, default=1)
    t.add_argument("--n-query", type=COUNT, default=N_QUERY, help="query images per class")
    t.add_argument("--iterations", type=COUNT, help="meta-training episodes (default: the paper's, 75,000 for "
                   "1-shot, else 50,000)")
    t.add_argument("--val-every", type=COUNT, default=PAPER_VALIDATION["every"])
    t.add_argument("--val-episodes", type=EPISODES, default=PAPER_VALIDATION["episodes"])
    t.add_argument("--batch-size", type=COUNT, help="inner-loop batch (default: 5 for 1-shot, else 25)")
    t.add_argument("--epochs", type=COUNT, help="inner-loop epochs (default: 12 for 1-shot, else 8)")
    t.add_argument("--bn-momentum", type=MOMENTUM, help="(default: 0.9 for 1-shot, else 0.95)")
    t.add_argument("--filters", type=COUNT, default=FILTERS)
    t.add_argument("--lr", type=POSITIVE, default=META_LR)
    t.add_argument("--grad-clip", type=POSITIVE, default=GRAD_CLIP)
    t.add_argument("--deviation", action="append", default=[], choices=sorted(DEVIATIONS),
                   help="turn on a named deviation from the original code (repeatable)")
    t.add_argument("--image-pool", type=image_pool, help="draw every episode from a fixed pool of this many images "
                   "per class (as the public loaders did); default: all images (as the original code)")
    t.add_argument("--label", help="the setting's name in results (default: e.g. 5w1s)")
    add_training_options(t)
    t.set_defaults(run=train)

    pt = sub.add_parser("pretrain", help="pre-train the baselines' 64-filter network as a classifier (resumes)")
    pt.add_argument("--data", required=True)
    pt.add_argument("--steps", type=COUNT, default=PAPER_PRETRAIN_STEPS)
    pt.add_argument("--batch-size", type=COUNT, default=PRETRAIN_BATCH)
    pt.add_argument("--lr", type=POSITIVE, default=META_LR, help="Adam's step size")
    pt.add_argument("--val-every", type=COUNT, default=PAPER_VALIDATION["every"])
    pt.add_argument("--val-episodes", type=EPISODES, default=PAPER_VALIDATION["episodes"],
                    help="5-way 1-shot validation episodes (cosine 1-NN)")
    add_training_options(pt)
    pt.set_defaults(run=pretrain)

    mn = sub.add_parser("train-matching-net", help="train Matching Networks (or FCE) on 5-way 5-shot episodes "
                        "as the original code did (resumes)")
    mn.add_argument("--data", required=True)
    mn.add_argument("--variant", required=True, choices=MATCHING_NET_VARIANTS)
    mn.add_argument("--iterations", type=COUNT, default=PAPER_MATCHING_NET_EPISODES, help="training episodes")
    mn.add_argument("--val-every", type=COUNT, default=PAPER_VALIDATION["every"])
    mn.add_argument("--val-episodes", type=EPISODES, default=PAPER_VALIDATION["episodes"],
                    help="validation episodes, each scored at 1 and 5 shots")
    mn.add_argument("--keep", default="last", choices=MATCHING_NET_KEEP,
                    help="the model tested: the last (as the original) or the best 5-shot validation")
    mn.add_argument("--deviation", action="append", default=[], choices=sorted(MATCHING_NET_DEVIATIONS),
                    help="turn on a named deviation from the original code (repeatable)")
    add_training_options(mn)
    mn.set_defaults(run=train_matching_net)

    sf = sub.add_parser("select-finetune", help="choose baseline-finetune's (lr, decay) on validation episodes")
    sf.add_argument("--data", required=True)
    sf.add_argument("--checkpoint", required=True, help="a pre-trained network (best.pt of 'reproml pretrain')")
    sf.add_argument("--n-way", type=WAYS, required=True)
    sf.add_argument("--k-shot", type=COUNT, required=True)
    sf.add_argument("--n-query", type=COUNT, default=N_QUERY)
    sf.add_argument("--lrs", default=",".join(map(str, GRID_LRS)), help="the grid's step sizes")
    sf.add_argument("--decays", default=",".join(map(str, GRID_DECAYS)), help="the grid's decays")
    sf.add_argument("--episodes", type=EPISODES, default=GRID_EPISODES, help="validation episodes per grid point")
    add_run_options(sf)
    sf.set_defaults(run=select_finetune)

    e = sub.add_parser("evaluate", help="evaluate a method over test episodes")
    e.add_argument("--data", required=True)
    e.add_argument("--method", default="meta_lstm", choices=METHODS)
    e.add_argument("--checkpoint", help="meta_lstm: a best.pt of 'reproml train'; baseline_*: of 'reproml pretrain'; "
                   "matching_net*: a model.pt of 'reproml train-matching-net'")
    e.add_argument("--finetune-choice", help="baseline_finetune: the choice.json of 'reproml select-finetune'")
    e.add_argument("--label", help="the setting's name in results (default: the checkpoint's, or e.g. 5w1s)")
    e.add_argument("--episodes", type=EPISODES, default=PAPER_TEST_EPISODES)
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    e.add_argument("--n-way", type=WAYS, help="must match the checkpoint's (checked)")
    e.add_argument("--k-shot", type=COUNT, help="default: the checkpoint's")
    e.add_argument("--n-query", type=COUNT, help="default: the checkpoint's")
    e.add_argument("--train-dataset", help="the dataset the method was trained on, for results "
                                          "(default: the checkpoint's, else --data's)")
    e.add_argument("--skip-if-too-small", action="store_true",
                   help="write a summary saying why instead of failing when --data has too few classes "
                        "or images per class for the episodes (transfer evaluation)")
    add_run_options(e)
    e.set_defaults(run=evaluate)

    a = sub.add_parser("aggregate", help="results/summary.csv from evaluation summaries")
    a.add_argument("evals", nargs="+", help="summary.json files written by 'reproml evaluate'")
    a.add_argument("--published", required=True, help="published-results.yaml")
    a.add_argument("--out", required=True)
    a.set_defaults(run=aggregate)

    f = sub.add_parser("figures", help="validation curves and gate values, PNGs per setting")
    f.add_argument("runs", nargs="+", help="run.json files written by 'reproml train'")
    f.add_argument("--gates", nargs="*", default=[], help="gates.csv files written by 'reproml evaluate'")
    f.add_argument("--summary", help="results/summary.csv, for the accuracy figure (accuracy.png) beside --published")
    f.add_argument("--published", help="published-results.yaml (with --summary)")
    f.add_argument("--out", required=True)
    f.set_defaults(run=figures)

    r = sub.add_parser("report", help="render the HTML and LaTeX report")
    r.add_argument("--templates", required=True, help="the folder of report.html.j2 and report.tex.j2")
    r.add_argument("--summary", required=True)
    r.add_argument("--manifest", required=True)
    r.add_argument("--figures", required=True)
    r.add_argument("--benchmarks", required=True)
    r.add_argument("--config-json", required=True)
    r.add_argument("--command", dest="rerun_command", default=README_COMMAND, help="the command that remakes this report")
    r.add_argument("--runs", nargs="+", required=True)
    r.add_argument("--evals", nargs="+", required=True)
    r.add_argument("--cross-shot", nargs="*", default=[], help="summary.json files of meta-learners tested at "
                   "another shot than they were trained at")
    r.add_argument("--pretrain-runs", nargs="*", default=[], help="run.json files written by 'reproml pretrain'")
    r.add_argument("--published", required=True, help="published-results.yaml (for the claims)")
    r.add_argument("--out", required=True)
    r.set_defaults(run=report)

    pb = sub.add_parser("publish", help="copy a rendered report, its figures and its configuration into a folder")
    pb.add_argument("files", nargs="+", help="the report's files (HTML, PDF, summary.csv)")
    pb.add_argument("--figures", nargs="*", default=[])
    pb.add_argument("--config-json", required=True)
    pb.add_argument("--command", dest="rerun_command", default=README_COMMAND, help="the command that remakes this report")
    pb.add_argument("--out", required=True)
    pb.set_defaults(run=publish)

    b = sub.add_parser("bench", help="seconds per episode on random data, beside the matrix-multiply rate")
    b.add_argument("--settings", default="5w1s,5w5s,10w10s,10w20s", help="comma-separated, e.g. 5w1s,5w5s")
    b.add_argument("--image-size", type=IMAGE_SIZE, default=84)
    b.add_argument("--episodes", type=COUNT, default=5, help="timed episodes per setting (the median is printed)")
    b.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    b.add_argument("--threads", type=COUNT, help="CPU threads for torch (default: torch's choice)")
    b.add_argument("--json", action="store_true", help="print one JSON object, setting -> figures")
    b.set_defaults(run=bench)

    sc = sub.add_parser("selfcheck", help="each numerical path (plain float32, the kernels, CUDA) against float64, "
                        "beside the float32 rounding floor; exit status 1 when one is over twice the floor")
    sc.add_argument("--settings", default="5w1s,5w5s", help="comma-separated, e.g. 5w1s,5w5s")
    sc.add_argument("--image-size", type=IMAGE_SIZE, default=84)
    sc.add_argument("--episodes", type=COUNT, default=3, help="episodes per setting and meta-learner (medians)")
    sc.add_argument("--draws", type=COUNT, default=3, help="one-ulp perturbations of the inputs per episode")
    sc.add_argument("--threads", type=COUNT, help="CPU threads for torch (default: torch's choice)")
    sc.add_argument("--json", action="store_true", help="print one JSON object")
    sc.add_argument("--quiet", action="store_true", help="no progress lines")
    sc.set_defaults(run=selfcheck)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cluster's or Snakemake's stop), handled as Ctrl-C is: temporaries removed, the resume hint."""


def terminate(signum, frame):
    raise Terminated


# The subcommands that write into an --out folder of their own, held while they run (atomic.exclusive).
HOLD_OUT = {"train", "pretrain", "train-matching-net", "select-finetune", "evaluate"}


def main(argv=None):
    args = parser().parse_args(argv)
    keep_freed_memory()
    if getattr(args, "threads", None):
        import os

        import torch
        torch.set_num_threads(min(args.threads, os.cpu_count() or 1))  # more threads than cores only contend
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        if args.command in HOLD_OUT:
            with exclusive(args.out):
                status = args.run(args)
        else:
            status = args.run(args)
    except UserError as exc:
        print(f"reproml {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"reproml {args.command}: {'terminated' if isinstance(exc, Terminated) else 'interrupted'}; rerun the "
              "same command to resume", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return status or 0
