"""Curate an auxiliary (neighbor) dataset: neighbors -> retrieve -> filter -> build (neighbor_lt.curate.main).

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

import sys

from neighbor_lt.curate import main

if __name__ == "__main__":
    sys.exit(main())
