"""Curate an auxiliary (neighbor) dataset: neighbors -> retrieve -> filter -> build (see neighbor_lt.curate).

Usage:
    python recipes/curate.py --config recipes/tiny_imagenet_lt/curate.yaml
    python recipes/curate.py --config recipes/tiny_imagenet_lt/curate.yaml --stages neighbors --neighbors.k 3
    python recipes/curate.py --config recipes/tiny_imagenet_lt/curate.yaml --stages retrieve --retry_failed
    python recipes/curate.py --config recipes/imagenet_lt/curate.yaml --retrieve.backend bing \\
        --retrieve.backend_kwargs.api_key_env MY_BING_KEY

The YAML file has a top-level `output_dir`, `stages`, a `target` section (the target set, same keys as the
`# Data` keys of recipes/*/train.yaml) and one section per stage; any key can be overridden on the command line by
its dotted path (--SECTION.KEY VALUE, --SECTION.KEY.SUBKEY VALUE). Every stage reads what the previous one wrote
under `output_dir` and is resumable: rerunning a finished stage does no new work. The resolved configuration
(secrets redacted) is written to `<output_dir>/curate_config.yaml`.

--retry_failed: the retrieve stage asks again the searches with zero results and fetches again only the URLs that
failed with a retryable outcome. The neighbors stage always asks again the classes whose request failed (only usable
replies are cached), with or without the flag.

Exit status: 0 when every stage produced something (a partial failure is logged with how to retry it), 1 when a stage
produced nothing usable (its one-line reason is logged; the later stages do not run), 2 for a configuration error
(one line naming the valid keys; nothing ran), 130 on Ctrl-C (a rerun resumes).
"""

import argparse
import logging
import sys

from neighbor_lt.curate import STAGES, ConfigError, StageError, load_config, run_stage
from neighbor_lt.secrets import install_log_redaction, redact

logger = logging.getLogger("curate")


def _one_line(error) -> str:
    return " ".join(redact(error).split())


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Stages:\n" + "\n".join(f"  {s.name:<10} {s.help}" for s in STAGES.values()),
    )
    parser.add_argument("--config", required=True, help="Curation YAML file.")
    parser.add_argument("--stages", nargs="+", default=None, help=f"Stages to run, from {list(STAGES)}.")
    parser.add_argument("--output_dir", default=None, help="Override the YAML's output_dir.")
    parser.add_argument(
        "--retry_failed",
        action="store_true",
        help="retrieve: ask again the searches with zero results and fetch again only the URLs that failed with a "
        "retryable outcome (timeout, 429 / 5xx, network or DNS error, robots.txt unreachable). neighbors: failed "
        "classes are asked again on every rerun.",
    )
    args, overrides = parser.parse_known_args(argv)

    ################
    # Logging
    ################
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    install_log_redaction()  # API keys and URL credentials never reach the log; HTTP request lines at WARNING

    ################
    # Config
    ################
    try:
        config = load_config(args.config, overrides, args.output_dir, args.stages, args.retry_failed)
        logger.info("resolved configuration: %s", config.save())
    except ConfigError as e:
        logger.error("configuration error: %s", _one_line(e))
        return 2
    context = config.context()

    ################
    # Stages
    ################
    for name in config.stages:
        logger.info("stage %s", name)
        try:
            run_stage(name, config, context)
        except StageError as e:  # before ConfigError: a key the endpoint rejects is both, and the stage ran
            logger.error("stage %s failed: %s", name, _one_line(e))
            return 1
        except ConfigError as e:
            logger.error("stage %s: configuration error: %s", name, _one_line(e))
            return 2
        except KeyboardInterrupt:
            logger.error("stage %s interrupted: what finished is recorded; rerun the same command to resume", name)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
