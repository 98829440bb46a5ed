"""Synthetic data in the format of the Amazon Reviews 2014 "5-core" dumps, and the tutorial's sample.

Nothing here is real data: users, products, brands and reviews are generated from a seed. The
real files of the same format are `reviews_Beauty_5.json.gz` (reviews, 5-core) and
`meta_Beauty.json.gz` (item metadata) of the Amazon product data by Julian McAuley (UCSD, 2014):

    https://jmcauley.ucsd.edu/data/amazon/

The 2018 release (https://nijianmo.github.io/amazon/) is read by the same `cllm4rec prepare
amazon` command.

Two gzipped files are written (`write_files`):
- reviews_Beauty_5.json.gz: one JSON object per line with reviewerID, asin, reviewerName, helpful,
  reviewText, overall, summary, unixReviewTime, reviewTime, grouped by asin as in the dumps;
- meta_Beauty.json.gz: one Python dict literal per line (single quotes, as in the 2014 dumps) with
  asin, title, price, salesRank, brand, categories (nested lists), description.
The same seed gives the same bytes (gzip header without a time stamp); files are written atomically.

The tutorial sample (`sample_lines`, `write_sample`; docs/tutorial.md and its test run the whole
pipeline on it): the catalogue has 150 products in five categories (skin care, hair care, makeup,
fragrance, nails), 30 each, plus 20 metadata lines for products nobody reviewed. Titles,
descriptions and reviews use words of their category. 300 shoppers each review 5-12 products, about
85% of them from the shopper's favourite category (popular products more often); 20 casual shoppers
review 2-4 products each, so that the 5-core filter has something to remove (a real 5-core file
would already be filtered). The content-signal sample (data_prep/planted_tastes.py) shares the
record format. `scripts/amazon_sample.py` writes either.
"""
from __future__ import annotations

import gzip
import json
import random
import string
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from data_prep.atomic import atomic_file


# ---- the 2014 dump format (both samples) ---------------------------------------------------------

NAMES = ["Ann", "Bo", "Carla", "Dee", "Emma", "Fran", "Gail", "Hana", "Ivy", "Jo", "Kate", "Lena", "Mia",
         "Nora", "Olga", "Pam", "Rita", "Sara", "Tess", "Uma", "Vera", "Wendy", "Yuki", "Zoe", "Alex", "Sam"]
HAPPY = ["Great", "Lovely", "My favourite", "Best", "Really nice"]
UNHAPPY = ["Disappointing", "Mediocre", "Overpriced", "Not impressed with this"]
START = datetime(2011, 1, 1, tzinfo=timezone.utc).timestamp()
DAY = 86_400


def fresh_code(rng: random.Random, prefix: str, length: int, taken: set[str]) -> str:
    """A fresh id like the dumps' ones: reviewerID 'A…' (14 chars), asin 'B00…' (10 chars)."""
    while True:
        code = prefix + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(length))
        if code not in taken:
            taken.add(code)
            return code


def reviewer_name(rng: random.Random) -> str:
    """A first name, sometimes with an initial."""
    return rng.choice(NAMES) + rng.choice(["", f" {rng.choice(string.ascii_uppercase)}."])


def review_record(user: str, name: str, asin: str, day: int, helpful: list[int], text: str, overall: float,
                  summary: str) -> dict:
    """One review line of the 2014 dumps, its fields in the dumps' order; `day` counts from 2011-01-01."""
    stamp = int(START) + day * DAY
    date = datetime.fromtimestamp(stamp, timezone.utc)
    return {
        "reviewerID": user,
        "asin": asin,
        "reviewerName": name,
        "helpful": helpful,
        "reviewText": text,
        "overall": overall,
        "summary": summary,
        "unixReviewTime": stamp,
        "reviewTime": f"{date.month:02d} {date.day}, {date.year}",
    }


def meta_record(rng: random.Random, taken: set[str], title: str, brand: str, path: list[str],
                max_price: float) -> dict:
    """One metadata line of the 2014 dumps, its fields in the dumps' order, with a fresh asin, a price and a
    sales rank drawn in that order; the caller adds the last field, "description" (it may draw after them)."""
    return {
        "asin": fresh_code(rng, "B00", 7, taken),
        "title": title,
        "price": round(rng.uniform(4, max_price), 2),
        "salesRank": {"Beauty": rng.randint(1_000, 300_000)},
        "brand": brand,
        "categories": [path],
    }


def file_lines(reviews: list[dict], metas: list[dict]) -> tuple[list[str], list[str]]:
    """Reviews as JSON lines grouped by asin (then time, reviewer); metadata as dict literals by asin."""
    reviews = sorted(reviews, key=lambda r: (r["asin"], r["unixReviewTime"], r["reviewerID"]))
    return [json.dumps(r) for r in reviews], [repr(m) for m in sorted(metas, key=lambda m: m["asin"])]


def _write_gzip(path: Path, lines: list[str]) -> None:
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    with atomic_file(path) as tmp:  # never a half-written file under the final name
        tmp.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))  # mtime 0: same bytes every run


def write_files(out: Path, review_lines: list[str], meta_lines: list[str]) -> tuple[Path, Path]:
    """Write the lines as reviews_Beauty_5.json.gz and meta_Beauty.json.gz into `out`; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "reviews_Beauty_5.json.gz", out / "meta_Beauty.json.gz"
    for path, lines in zip(paths, (review_lines, meta_lines)):
        _write_gzip(path, lines)
    return paths


def describe(reviews_path: Path) -> str:
    """Users, items, interactions and interactions per item (min / median / max) of a reviews file."""
    with gzip.open(reviews_path, "rt", encoding="utf-8") as lines:
        pairs = [(r["reviewerID"], r["asin"]) for r in map(json.loads, lines)]
    per_item = sorted(Counter(asin for _, asin in pairs).values())
    n = len(per_item)
    median = (per_item[(n - 1) // 2] + per_item[n // 2]) / 2
    low = sum(c <= 7 for c in per_item)
    return (f"{len({u for u, _ in pairs}):,} users, {n:,} items, {len(pairs):,} interactions; per item: min "
            f"{per_item[0]}, median {median:g}, max {per_item[-1]}; {low:,} items ({low / n:.0%}) with at most 7")


# ---- the tutorial sample ----------------------------------------------------------------------------

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
OPENINGS = ["I love this.", "Great product.", "Works well.", "Pretty good.", "Would buy again.", "Not bad."]


def _catalogue(rng: random.Random) -> list[dict]:
    """150 reviewed products (30 per category) and 20 never reviewed, with their 2014 metadata."""
    items, taken = [], set()
    for category, spec in CATEGORIES.items():
        combos = [(b, t, k) for b in spec["brands"] for t in spec["traits"] for k in spec["kinds"]]
        rng.shuffle(combos)
        for rank, (brand, trait, kind) in enumerate(combos[:ITEMS_PER_CATEGORY + UNREVIEWED_ITEMS // 5]):
            size = rng.choice(["1 oz", "1.7 oz", "3.4 oz", "8 fl oz", "0.5 fl oz"])
            meta = meta_record(rng, taken, f"{brand} {trait} {kind}, {size}", brand, spec["path"], max_price=60)
            meta["description"] = f"<p>{trait} {kind} by {brand}.</p> {spec['about']}."
            items.append({"category": category, "kind": kind, "reviewed": rank < ITEMS_PER_CATEGORY,
                          "popularity": 1.0 / (rank + 1) ** 0.7, "meta": meta})
    return items


def _review(rng: random.Random, user: str, name: str, item: dict, day: int) -> dict:
    """A review of a product of the tutorial catalogue: mostly praise in the words of its category."""
    spec = CATEGORIES[item["category"]]
    happy = rng.random() < 0.8
    phrase = rng.choice(spec["praise"] if happy else spec["gripe"])
    helpful = [h := rng.randint(0, 3), h + rng.randint(0, 2)]
    text = f"{rng.choice(OPENINGS)} I bought the {item['kind'].lower()} and {phrase}."
    overall = float(rng.choice([4, 5, 5]) if happy else rng.choice([2, 3]))
    summary = f"{rng.choice(HAPPY if happy else UNHAPPY)} {item['kind'].lower()}"
    return review_record(user, name, item["meta"]["asin"], day, helpful, text, overall, summary)


def sample_lines(seed: int = 0) -> tuple[list[str], list[str]]:
    """The review lines (JSON) and metadata lines (Python dict literals) of the tutorial sample."""
    rng = random.Random(seed)
    items = _catalogue(rng)
    reviewed = [it for it in items if it["reviewed"]]
    by_category = {c: [it for it in reviewed if it["category"] == c] for c in CATEGORIES}
    reviews, users = [], set()
    for shopper in range(SHOPPERS + CASUAL_SHOPPERS):
        user = fresh_code(rng, "A", 13, users)
        name = reviewer_name(rng)
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
    return file_lines(reviews, [it["meta"] for it in items])


def write_sample(out: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write the tutorial sample into `out`; returns the paths of its two files."""
    return write_files(out, *sample_lines(seed))
