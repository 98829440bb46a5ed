"""Write a small SYNTHETIC sample in the format of the Amazon Reviews 2014 "5-core" dumps.

Nothing here is real data: users, products, brands and reviews are generated from a seed. The
sample exists so that the tutorial (docs/tutorial.md) and its test can run the whole pipeline
without a download. The real files of the same format are `reviews_Beauty_5.json.gz` (reviews,
5-core) and `meta_Beauty.json.gz` (item metadata) of the Amazon product data by Julian McAuley
(UCSD, 2014):

    https://jmcauley.ucsd.edu/data/amazon/

The 2018 release (https://nijianmo.github.io/amazon/) is read by the same `cllm4rec prepare
amazon` command.

Two gzipped files are written into --out:
- reviews_Beauty_5.json.gz: one JSON object per line with reviewerID, asin, reviewerName, helpful,
  reviewText, overall, summary, unixReviewTime, reviewTime, grouped by asin as in the dumps;
- meta_Beauty.json.gz: one Python dict literal per line (single quotes, as in the 2014 dumps) with
  asin, title, price, salesRank, brand, categories (nested lists), description.

The catalogue has 150 products in five categories (skin care, hair care, makeup, fragrance,
nails), 30 each, plus 20 metadata lines for products nobody reviewed. Titles, descriptions and
reviews use words of their category. 300 shoppers each review 5-12 products, about 85% of them
from the shopper's favourite category (popular products more often); 20 casual shoppers review
2-4 products each, so that the 5-core filter has something to remove (a real 5-core file would
already be filtered). The same seed gives the same bytes (gzip header without a time stamp).

    python scripts/amazon_sample.py --out /tmp/tutorial-work/raw
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
import string
from datetime import datetime, timezone
from pathlib import Path

from data_prep.atomic import atomic_file

CATEGORIES = {
    "skin": {
        "path": ["Beauty", "Skin Care", "Face", "Creams & Moisturizers"],
        "brands": ["Dermaluxe", "PureGlow", "Cleartone Lab"],
        "kinds": ["Face Cream", "Night Cream", "Serum", "Moisturizer", "Eye Cream", "Cleanser"],
        "traits": ["Hydrating", "Anti-Aging", "Vitamin C", "Hyaluronic", "Oil-Free"],
        "about": "Made for dry and sensitive skin, it absorbs quickly and leaves the face soft and smooth",
        "praise": ["my skin feels soft and hydrated", "it calmed the redness on my face",
                   "no more dry patches on my cheeks", "my complexion looks brighter"],
        "gripe": ["it made my skin a little oily", "it broke me out around the nose"],
    },
    "hair": {
        "path": ["Beauty", "Hair Care", "Shampoos"],
        "brands": ["SilkStrand", "Argan Bliss", "HairCraft"],
        "kinds": ["Shampoo", "Conditioner", "Hair Mask", "Hair Oil", "Leave-In Spray", "Dry Shampoo"],
        "traits": ["Argan Oil", "Keratin", "Volumizing", "Sulfate-Free", "Curl Defining"],
        "about": "Made for frizzy and damaged hair, it adds shine and keeps curls soft without weighing them down",
        "praise": ["my hair is shiny and less frizzy", "my curls stay defined all day",
                   "it detangles my hair easily", "my scalp feels clean and my hair smells great"],
        "gripe": ["it left my hair a bit greasy", "my hair felt dry after washing"],
    },
    "makeup": {
        "path": ["Beauty", "Makeup", "Face", "Foundation"],
        "brands": ["Colorwave Studio", "Velvet Muse", "LumiLash"],
        "kinds": ["Lipstick", "Mascara", "Foundation", "Eyeliner", "Eyeshadow Palette", "Blush"],
        "traits": ["Matte", "Long-Wear", "Waterproof", "Nude", "Shimmer"],
        "about": "Its rich pigment blends easily and stays on the lips, lashes and eyes all day",
        "praise": ["the color is gorgeous and lasts all day", "my lashes look long and full",
                   "it blends perfectly with my skin tone", "the pigment is rich and does not smudge"],
        "gripe": ["the shade was darker than the picture", "it smudged by the afternoon"],
    },
    "fragrance": {
        "path": ["Beauty", "Fragrance", "Women's", "Eau de Parfum"],
        "brands": ["Maison Fleur", "Scentique", "Amber & Oud"],
        "kinds": ["Eau de Parfum", "Eau de Toilette", "Body Mist", "Perfume Oil", "Rollerball"],
        "traits": ["Vanilla", "Rose", "Citrus", "Jasmine", "Sandalwood"],
        "about": "A floral scent with notes of musk and amber that lingers on the skin for hours",
        "praise": ["the scent is lovely and lasts for hours", "I get compliments every time I wear this perfume",
                   "a warm floral smell, not too strong", "the fragrance lingers all evening"],
        "gripe": ["the scent fades too quickly", "it smells more like alcohol than flowers"],
    },
    "nails": {
        "path": ["Beauty", "Nail Care", "Nail Polish"],
        "brands": ["NailNova", "Polish Parlor", "GelGenie"],
        "kinds": ["Nail Polish", "Gel Polish", "Top Coat", "Base Coat", "Cuticle Oil", "Nail Strengthener"],
        "traits": ["Quick-Dry", "Glossy", "Chip-Resistant", "Pastel", "Glitter"],
        "about": "A glossy manicure that dries fast and resists chips for a week on natural nails",
        "praise": ["my manicure lasted a week without chipping", "it dries fast and looks glossy",
                   "my nails are stronger and grow longer", "the polish goes on smooth in two coats"],
        "gripe": ["it chipped after two days", "the polish was thick and streaky"],
    },
}
ITEMS_PER_CATEGORY = 30
UNREVIEWED_ITEMS = 20
SHOPPERS = 300
CASUAL_SHOPPERS = 20
FAVOURITE_SHARE = 0.85
NAMES = ["Ann", "Bo", "Carla", "Dee", "Emma", "Fran", "Gail", "Hana", "Ivy", "Jo", "Kate", "Lena", "Mia",
         "Nora", "Olga", "Pam", "Rita", "Sara", "Tess", "Uma", "Vera", "Wendy", "Yuki", "Zoe", "Alex", "Sam"]
OPENINGS = ["I love this.", "Great product.", "Works well.", "Pretty good.", "Would buy again.", "Not bad."]
HAPPY = ["Great", "Lovely", "My favourite", "Best", "Really nice"]
UNHAPPY = ["Disappointing", "Mediocre", "Overpriced", "Not impressed with this"]
START = datetime(2011, 1, 1, tzinfo=timezone.utc).timestamp()
DAY = 86_400


def _code(rng: random.Random, prefix: str, length: int, taken: set[str]) -> str:
    """A fresh id like the dumps' ones: reviewerID 'A…' (14 chars), asin 'B00…' (10 chars)."""
    while True:
        code = prefix + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(length))
        if code not in taken:
            taken.add(code)
            return code


def _catalogue(rng: random.Random) -> list[dict]:
    """150 reviewed products (30 per category) and 20 never reviewed, with their 2014 metadata."""
    items, taken = [], set()
    for category, spec in CATEGORIES.items():
        combos = [(b, t, k) for b in spec["brands"] for t in spec["traits"] for k in spec["kinds"]]
        rng.shuffle(combos)
        for rank, (brand, trait, kind) in enumerate(combos[:ITEMS_PER_CATEGORY + UNREVIEWED_ITEMS // 5]):
            size = rng.choice(["1 oz", "1.7 oz", "3.4 oz", "8 fl oz", "0.5 fl oz"])
            items.append({
                "category": category, "kind": kind, "reviewed": rank < ITEMS_PER_CATEGORY,
                "popularity": 1.0 / (rank + 1) ** 0.7,
                "meta": {
                    "asin": _code(rng, "B00", 7, taken),
                    "title": f"{brand} {trait} {kind}, {size}",
                    "price": round(rng.uniform(4, 60), 2),
                    "salesRank": {"Beauty": rng.randint(1_000, 300_000)},
                    "brand": brand,
                    "categories": [spec["path"]],
                    "description": f"<p>{trait} {kind} by {brand}.</p> {spec['about']}.",
                },
            })
    return items


def _review(rng: random.Random, user: str, name: str, item: dict, day: int) -> dict:
    spec = CATEGORIES[item["category"]]
    happy = rng.random() < 0.8
    phrase = rng.choice(spec["praise"] if happy else spec["gripe"])
    stamp = int(START) + day * DAY
    date = datetime.fromtimestamp(stamp, timezone.utc)
    return {
        "reviewerID": user,
        "asin": item["meta"]["asin"],
        "reviewerName": name,
        "helpful": [h := rng.randint(0, 3), h + rng.randint(0, 2)],
        "reviewText": f"{rng.choice(OPENINGS)} I bought the {item['kind'].lower()} and {phrase}.",
        "overall": float(rng.choice([4, 5, 5]) if happy else rng.choice([2, 3])),
        "summary": f"{rng.choice(HAPPY if happy else UNHAPPY)} {item['kind'].lower()}",
        "unixReviewTime": stamp,
        "reviewTime": f"{date.month:02d} {date.day}, {date.year}",
    }


def sample_lines(seed: int = 0) -> tuple[list[str], list[str]]:
    """The review lines (JSON) and metadata lines (Python dict literals) of the sample."""
    rng = random.Random(seed)
    items = _catalogue(rng)
    reviewed = [it for it in items if it["reviewed"]]
    by_category = {c: [it for it in reviewed if it["category"] == c] for c in CATEGORIES}
    reviews, users = [], set()
    for shopper in range(SHOPPERS + CASUAL_SHOPPERS):
        user = _code(rng, "A", 13, users)
        name = rng.choice(NAMES) + rng.choice(["", f" {rng.choice(string.ascii_uppercase)}."])
        favourite = list(CATEGORIES)[shopper % len(CATEGORIES)]
        n = rng.randint(5, 12) if shopper < SHOPPERS else rng.randint(2, 4)
        picked: list[dict] = []
        while len(picked) < n:
            pool = by_category[favourite] if rng.random() < FAVOURITE_SHARE else reviewed
            item = rng.choices(pool, weights=[it["popularity"] for it in pool])[0]
            if item not in picked:
                picked.append(item)
        day = rng.randint(0, 3 * 365)
        for item in picked:
            day += rng.randint(1, 40)
            reviews.append(_review(rng, user, name, item, day))
    reviews.sort(key=lambda r: (r["asin"], r["unixReviewTime"], r["reviewerID"]))
    review_lines = [json.dumps(r) for r in reviews]
    meta_lines = [repr(it["meta"]) for it in sorted(items, key=lambda it: it["meta"]["asin"])]
    return review_lines, meta_lines


def write_sample(out: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write reviews_Beauty_5.json.gz and meta_Beauty.json.gz into `out`; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "reviews_Beauty_5.json.gz", out / "meta_Beauty.json.gz"
    for path, lines in zip(paths, sample_lines(seed)):
        data = "".join(line + "\n" for line in lines).encode("utf-8")
        with atomic_file(path) as tmp:  # never a half-written file under the final name
            tmp.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))  # mtime 0: same bytes every run
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the two .json.gz files into")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    for path in write_sample(args.out, args.seed):
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            count = sum(1 for _ in lines)
        print(f"wrote {path} ({count:,} lines, {path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
