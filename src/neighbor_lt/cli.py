"""The ``neighbor-lt`` command: the recipes of the repository, for a pip install with no checkout.

Usage:
    neighbor-lt train --config my_train.yaml [--KEY VALUE ...]        # = recipes/train.py
    accelerate launch -m neighbor_lt.cli train --config my_train.yaml  # several processes / GPUs
    neighbor-lt curate --config my_curate.yaml [--stages ...]          # = recipes/curate.py
    neighbor-lt evaluate --model outputs/run [--config data.yaml] [--split test]  # a saved model, again
    neighbor-lt analyze outputs/run [outputs/baseline ...]            # = recipes/analyze.py
    neighbor-lt ablate --config my_ablate.yaml                         # = recipes/ablate.py

``recipes/train.py`` and ``recipes/analyze.py`` are thin wrappers of :func:`train` and :func:`analyze`. Without
``--config``, ``train`` runs the built-in demo, ``recipes/demo/train.yaml``, which lives in the repository (its data
paths are relative to the checkout's root): from a pip install, pass your own ``--config``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import textwrap
import traceback

from neighbor_lt.configs import DATA_SOURCES, ConfigError, pop_debug
from neighbor_lt.extras import missing_extra_message

logger = logging.getLogger(__name__)

DEMO_CONFIG = os.path.join("recipes", "demo", "train.yaml")


# --------------------------------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------------------------------
def train(argv=None, default_config: str | None = None):
    """Train on target + neighbor classes, save (and push) the masked, target-only model; the results on the eval
    split, or None without one. ``recipes/train.py`` and ``neighbor-lt train`` run this.

    Example:
        >>> train(["--config", "recipes/demo/train.yaml", "--max_steps", "2"])["overall"]  # doctest: +SKIP

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when None): ``--config YAML`` and overrides of its keys.
        default_config: the YAML used without ``--config`` (default: the built-in demo, from a repository checkout).
    """
    from neighbor_lt import train as training

    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help", "--help_all"} & set(argv):
        print(train_help(full="--help_all" in argv))
        raise SystemExit(0)  # as argparse's --help
    if "--config" not in argv:
        default_config = default_config or (DEMO_CONFIG if os.path.isfile(DEMO_CONFIG) else None)
        if not default_config:
            raise ConfigError(
                f"no --config given and no {DEMO_CONFIG} here: pass your training YAML with --config "
                "(the built-in demo ships with the repository; run it from the checkout's root)"
            )
        argv = ["--config", default_config, *argv, *_without_demo_aux(argv)]
    return training.run(training.load_config(argv)).results


def _without_demo_aux(argv: list[str]) -> list[str]:
    """Your own data on the demo's defaults: the demo's auxiliary set names the demo's classes, so it is dropped
    (as the demo's data files are) unless the command line names an auxiliary set too."""
    keys = {a[2:].split("=", 1)[0] for a in argv if a.startswith("--")}
    if not keys & set(DATA_SOURCES) or keys & {"aux_dataset", "neighbor_manifest"}:
        return []
    logger.warning("no --config: your data on the demo's defaults, without the demo's aux_dataset (pass --aux_dataset "
                   "for yours, or your own --config)")  # fmt: skip
    return ["--aux_dataset", "", "--neighbor_manifest", ""]


def train_help(full: bool = False) -> str:
    """``neighbor-lt train --help``: the recipe's own keys with their defaults; ``full``: argparse's list of every
    key, the ~100 ``transformers.TrainingArguments`` ones included."""
    from transformers import HfArgumentParser, TrainingArguments

    from neighbor_lt.configs import DataArguments, ModelArguments, NeighborLTTrainingArguments

    classes = (ModelArguments, DataArguments, NeighborLTTrainingArguments)
    if full:
        return HfArgumentParser(classes, prog="neighbor-lt train").format_help()
    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    lines = [
        "usage: neighbor-lt train --config YAML [--KEY VALUE ...] [--debug]",
        "       (from the checkout: accelerate launch recipes/train.py ...; without --config: the built-in demo)",
        "",
        "Train on target + neighbor classes, save the masked target-only model, evaluate it (README: Training your",
        "own). Every key of the YAML can be overridden as --KEY VALUE; unknown keys are errors.",
        "",
        "  --config YAML         the training YAML (e.g. recipes/demo/train.yaml, a run's args.yaml)",
        "  --debug               show the traceback behind a configuration error (or NEIGHBOR_LT_DEBUG=1)",
        "  --help_all            every key, with the ~100 transformers TrainingArguments ones (output_dir, ",
        "                        learning_rate, num_train_epochs, resume_from_checkpoint, ...)",
    ]
    for cls in classes:
        lines += ["", f"{cls.__name__}:"]
        for f in dataclasses.fields(cls):
            if not f.init or (cls is NeighborLTTrainingArguments and f.name in inherited):
                continue
            default = f.default if f.default is not dataclasses.MISSING else None
            text = f"{f.metadata.get('help', '')} (default: {default})"
            lines.append(f"  --{f.name}")
            lines += textwrap.wrap(text, width=116, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# analyze
# --------------------------------------------------------------------------------------------------------------------
ANALYZE_HELP = """Plots of trained runs, written as PNG files into the first run's folder (its model card shows them).

1. per_class_accuracy.png: per-class accuracy against training-image count (log scale), Many / Medium / Few colors,
   one marker per run.
2. feature_map.png: 2-D UMAP / PCA map of features of a head class, a confusable tail class and their neighbor
   classes, before and after training (first run only).
3. group_accuracy.png: Overall / Many / Medium / Few bars for every run, each labelled with its training budget.

Run it from the folder training ran in, so the data paths of args.yaml resolve.
"""


def _analyze_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neighbor-lt analyze", description=ANALYZE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="output_dir folders of recipes/train.py; the first is analyzed")
    parser.add_argument("--labels", nargs="+", help="legend names, one per run (default: folder name and loss)")
    parser.add_argument("--output_dir", help="where the PNG files go (default: the first run's folder)")
    parser.add_argument("--head_class", help="head class of the feature map (default: most images, has neighbors)")
    parser.add_argument("--tail_class", help="tail class of the feature map (default: most confusable Few class)")
    parser.add_argument("--before", help="checkpoint for the 'before' features (default: fresh model, same config)")
    parser.add_argument("--max_images_per_class", type=int, default=40, help="images per class in the feature map")
    parser.add_argument("--projection", choices=("auto", "umap", "pca"), default="auto", help="2-D projection")
    parser.add_argument("--no_feature_map", action="store_true", help="skip the feature map (no data or model pass)")
    parser.add_argument("--no_card", action="store_true", help="do not re-render the first run's README.md")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def analyze(argv=None) -> list[str]:
    """Write the plots of trained runs (and re-render the first run's card); the paths written.
    ``recipes/analyze.py`` and ``neighbor-lt analyze`` run this.

    Example:
        >>> analyze(["outputs/demo", "outputs/demo-baseline", "--projection", "pca"])  # doctest: +SKIP

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when None); ``--help`` lists them.
    """
    parser = _analyze_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.labels and len(args.labels) != len(args.runs):
        parser.error(f"--labels needs one name per run ({len(args.runs)})")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    from neighbor_lt.hub import write_model_card
    from neighbor_lt.plots import feature_map_for_run, load_run, plot_group_accuracy, plot_per_class_accuracy

    for folder in args.runs:  # after the import: a missing plots extra is named first
        if not os.path.isdir(folder):
            raise ConfigError(f"analyze: no run folder {folder!r} here ({os.getcwd()}); pass a training output_dir")

    ################
    # Runs
    ################
    runs = [load_run(folder, label) for folder, label in zip(args.runs, args.labels or [None] * len(args.runs))]
    output_dir = args.output_dir or runs[0].folder
    os.makedirs(output_dir, exist_ok=True)

    ################
    # Plots
    ################
    written = [
        plot_per_class_accuracy(runs, os.path.join(output_dir, "per_class_accuracy.png")),
        plot_group_accuracy(runs, os.path.join(output_dir, "group_accuracy.png")),
    ]
    if not args.no_feature_map:
        written.append(
            feature_map_for_run(
                runs[0],
                os.path.join(output_dir, "feature_map.png"),
                head=args.head_class,
                tail=args.tail_class,
                before=args.before,
                max_images_per_class=args.max_images_per_class,
                method=args.projection,
                seed=args.seed,
            )
        )

    ################
    # Card
    ################
    if not args.no_card and os.path.abspath(output_dir) == os.path.abspath(runs[0].folder):
        write_model_card(runs[0].folder)  # now shows the plots
    for path in written:
        print(f"wrote {path}")
    return written


# --------------------------------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------------------------------
def evaluate(argv=None) -> dict:
    """Overall / Many / Medium / Few of a saved model on a split, grouped by the model's own training counts, written
    beside it (``eval_<split>.json``); :func:`neighbor_lt.evaluation.evaluate_saved_model`. The results.

    Example:
        >>> evaluate(["--model", "outputs/demo", "--split", "validation"])["few"]  # doctest: +SKIP

    Args:
        argv: ``--model DIR``, the data (``--config YAML`` and / or ``--KEY VALUE``; default: the model's own
            ``args.yaml``), ``--split``, ``--batch_size``, ``--update_card`` (``--help`` lists them all).
    """
    from neighbor_lt.configs import setup_logging
    from neighbor_lt.evaluation import evaluate_saved_model, parse_evaluate_args
    from neighbor_lt.metrics import format_table

    args, data_args = parse_evaluate_args(list(sys.argv[1:] if argv is None else argv))
    setup_logging(argparse.Namespace(should_log=True))
    results = evaluate_saved_model(args, data_args)
    print(format_table(results, title=f"{args.model} on {results['split']} ({results['num_images']} images)"))
    return results


# --------------------------------------------------------------------------------------------------------------------
# curate, ablate
# --------------------------------------------------------------------------------------------------------------------
def curate(argv=None) -> int:
    """The curation recipe (neighbors -> retrieve -> filter -> build): :func:`neighbor_lt.curate.main`; its exit
    status."""
    from neighbor_lt.curate import main as curate_main  # imported on use: --help stays light

    return curate_main(argv)


def ablate(argv=None) -> int:
    """The ablation (:func:`neighbor_lt.ablation.main`): every variant x seed with a report; its exit status."""
    from neighbor_lt import ablation  # imported on use: --help stays light

    try:
        ablation.main(argv)
    except ablation.AblationRunsFailed as err:
        print(f"neighbor-lt ablate: {err}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------------------------------------
# neighbor-lt
# --------------------------------------------------------------------------------------------------------------------
COMMANDS = {
    "train": (train, "train on target + neighbor classes, save the masked target-only model (recipes/train.py)"),
    "curate": (curate, "find neighbor classes and build the auxiliary dataset (recipes/curate.py)"),
    "evaluate": (evaluate, "Overall / Many / Medium / Few of a saved model on any split, written beside it"),
    "analyze": (analyze, "plots of trained runs, linked from the model card (recipes/analyze.py)"),
    "ablate": (ablate, "do neighbors help on your data? every variant x seed, with a report (recipes/ablate.py)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return (
        "usage: neighbor-lt COMMAND [ARGS ...]    (neighbor-lt COMMAND --help for its arguments)\n\ncommands:\n"
        + "\n".join(lines)
    )


def main(argv=None) -> int:
    """The ``neighbor-lt`` console script: ``neighbor-lt COMMAND [ARGS ...]``; the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"neighbor-lt: unknown command {name!r}\n{usage()}", file=sys.stderr)
        return 2
    return run_command(name, rest)


def run_command(name: str, argv: list[str], **kwargs) -> int:
    """Run the command ``name`` of :data:`COMMANDS`; a configuration error is one line on stderr and exit status 2
    (with its traceback under ``--debug`` or ``NEIGHBOR_LT_DEBUG=1``). The recipes' ``__main__`` blocks use it too.

    Example:
        >>> sys.exit(run_command("train", sys.argv[1:], default_config="recipes/demo/train.yaml"))  # doctest: +SKIP
    """
    argv = list(argv)
    debug = pop_debug(argv)
    try:
        status = COMMANDS[name][0](argv, **kwargs)
    except ConfigError as err:
        if debug:
            traceback.print_exc()
        print(f"configuration error: {err}", file=sys.stderr)
        return 2  # as argparse exits on a usage error: fix the command or the config, then rerun
    except ImportError as err:  # an optional module of an extra that is not installed
        message = missing_extra_message(err)
        if message is None:
            raise
        print(f"neighbor-lt {name}: {message}", file=sys.stderr)
        return 2
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
