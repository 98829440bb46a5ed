"""Write a SYNTHETIC sample in the format of the Amazon Reviews 2014 "5-core" dumps.

Nothing here is real data. Two gzipped files are written into --out, reviews_Beauty_5.json.gz
(JSON lines) and meta_Beauty.json.gz (Python dict literals), in the format of the real files of
the Amazon product data by Julian McAuley (https://jmcauley.ucsd.edu/data/amazon/), which
`cllm4rec prepare amazon` reads. The same seed gives the same bytes; files are written atomically.
The generators live in data_prep/; their module docstrings describe each sample in full.

Preset `tutorial` (the default; docs/tutorial.md and its test run the whole pipeline on it):
150 products in five categories whose titles, descriptions and reviews use words of their
category; 300 shoppers mostly from one favourite category and 20 casual ones, so that the 5-core
filter has something to remove (data_prep/synthetic_amazon.py).

    python scripts/amazon_sample.py --out /tmp/tutorial-work/raw

Preset `content-signal`: tastes planted in the text, a dataset on which a recommender that reads
text (CLLM4Rec) should beat the same model without text (its LLM-CF ablation). 600 users with
tastes for 2-3 of 20 theme words, 400 products whose texts name their 1-2 themes, reviews that
state the reviewer's tastes, a long tail topped up to the 5-core; planted_truth.json, written
next to the two files, holds the ground truth (data_prep/planted_tastes.py). --users, --products,
--themes and --on-taste change the planted sizes (e.g. a small copy for tests).

    python scripts/amazon_sample.py --preset content-signal --out /tmp/content-signal/raw
    cllm4rec prepare amazon --reviews /tmp/content-signal/raw/reviews_Beauty_5.json.gz \\
        --meta /tmp/content-signal/raw/meta_Beauty.json.gz --name content-signal
"""
from __future__ import annotations

import argparse
import gzip
from pathlib import Path

from data_prep.planted_tastes import THEMES, Planted, write_planted
from data_prep.synthetic_amazon import describe, write_sample

PRESETS: dict[str, Planted | None] = {"tutorial": None, "content-signal": Planted()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the .json.gz files into")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tutorial",
                        help="tutorial (default): the tutorial's sample; content-signal: tastes planted in the text")
    planted = parser.add_argument_group("content-signal sizes (with --preset content-signal)")
    defaults = Planted()
    planted.add_argument("--users", type=int, help=f"users (default {defaults.users})")
    planted.add_argument("--products", type=int, help=f"products (default {defaults.products})")
    planted.add_argument("--themes", type=int, help=f"themes, at most {len(THEMES)} (default {defaults.themes})")
    planted.add_argument("--on-taste", type=float, help=f"share of picks from the user's themes (default {defaults.on_taste})")
    args = parser.parse_args(argv)
    sizes = {k: v for k in ("users", "products", "themes", "on_taste") if (v := getattr(args, k)) is not None}
    spec = PRESETS[args.preset]
    if spec is None and sizes:
        parser.error("--users, --products, --themes and --on-taste need --preset content-signal")
    if spec is not None:
        try:
            spec = spec._replace(**sizes).check()
        except ValueError as error:
            parser.error(str(error))
    paths = write_sample(args.out, args.seed) if spec is None else write_planted(args.out, args.seed, spec)
    for path in paths[:2]:
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            count = sum(1 for _ in lines)
        print(f"wrote {path} ({count:,} lines, {path.stat().st_size:,} bytes)")
    if spec is not None:
        print(f"wrote {paths[2]} (planted themes and tastes)")
        print(describe(paths[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
