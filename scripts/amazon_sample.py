"""Write a SYNTHETIC sample in the format of the Amazon Reviews 2014 "5-core" dumps.

Nothing here is real data: users, products, brands and reviews are generated from a seed. The
real files of the same format are `reviews_Beauty_5.json.gz` (reviews, 5-core) and
`meta_Beauty.json.gz` (item metadata) of the Amazon product data by Julian McAuley (UCSD, 2014):

    https://jmcauley.ucsd.edu/data/amazon/

The 2018 release (https://nijianmo.github.io/amazon/) is read by the same `cllm4rec prepare
amazon` command.

Two gzipped files are written into --out:
- reviews_Beauty_5.json.gz: one JSON object per line with reviewerID, asin, reviewerName, helpful,
  reviewText, overall, summary, unixReviewTime, reviewTime, grouped by asin as in the dumps;
- meta_Beauty.json.gz: one Python dict literal per line (single quotes, as in the 2014 dumps) with
  asin, title, price, salesRank, brand, categories (nested lists), description.
The same seed gives the same bytes (gzip header without a time stamp); files are written atomically.

Preset `tutorial` (the default; docs/tutorial.md and its test run the whole pipeline on it)
-------------------------------------------------------------------------------------------
The catalogue has 150 products in five categories (skin care, hair care, makeup, fragrance,
nails), 30 each, plus 20 metadata lines for products nobody reviewed. Titles, descriptions and
reviews use words of their category. 300 shoppers each review 5-12 products, about 85% of them
from the shopper's favourite category (popular products more often); 20 casual shoppers review
2-4 products each, so that the 5-core filter has something to remove (a real 5-core file would
already be filtered).

    python scripts/amazon_sample.py --out /tmp/tutorial-work/raw

Preset `content-signal`: tastes planted in the text
---------------------------------------------------
A dataset on which a recommender that reads text (CLLM4Rec) should beat the same model without
text (its LLM-CF ablation): the users' tastes are written in the item texts and in the reviews,
while the interaction graph alone says little about the many long-tail items.

- Themes. 20 scent/ingredient words (`THEMES`: vanilla, coconut, lavender, ...; up to 30 with
  --themes), lower case, each one token (with its leading space) of the SmolLM2 tokenizer.
- Items (400). Each product has one theme (half of them two), primary themes spread evenly.
  Its title and description name its themes, e.g. "Meadow Lane Body Lotion with vanilla and
  coconut, 8 fl oz" / "A body lotion made with vanilla and coconut. Gentle enough for daily use.";
  brand, kind (body lotion, shampoo, ...), size and category path are noise, drawn independently
  of the themes, and contain no theme word.
- Users (600). Each has a taste for 2 or 3 themes with weights (0.6, 0.4) or (0.5, 0.3, 0.2);
  primary tastes are spread evenly over the themes.
- Interactions. A user reviews 5-12 products; each pick is, with probability 0.8 (--on-taste),
  a product of one of the user's themes (theme drawn by taste weight), otherwise any product.
  Within a pool, a product is drawn by a long-tailed popularity, 1/(rank+1)^0.8 over a random
  ranking of the whole catalogue (independent of the themes). Products left with fewer than 5
  reviewers are then topped up to 5, each extra reviewer again a fan of one of the product's
  themes with probability 0.8 and anyone otherwise, so the 5-core filter removes nothing and
  about half the catalogue sits at 5-7 interactions, i.e. about 4 training interactions after the
  split (as few as 1), some of them off-taste: too few for an ID-only model to place such a
  product, whereas its text names its themes. Each user's products are then put in a random order
  in time.
- Reviews. Every review states the reviewer's tastes, all of them, in weight order ("I always
  look for vanilla, mint and cedar."), then speaks about the product, naming the theme it
  shares with the reviewer ("The vanilla in this body lotion smells wonderful.", summary "Lovely
  vanilla body lotion") or, for a product outside the reviewer's tastes, the product's themes
  ("This body lotion with lavender was not for me.", summary "Not for me"). No other theme word
  appears in a review.
  The content LLM can thus learn each user's tastes from the user's (training) reviews, and each
  item's themes from its text.
- Ground truth. planted_truth.json (also written to --out; `cllm4rec prepare` ignores it) lists
  the themes, each asin's themes and each reviewerID's tastes, in weight order.

With the defaults (seed 0) the files hold 600 users, 400 items and 5,254 interactions (per item:
min 5, median 8, max 159; 187 items with at most 7), and `cllm4rec prepare amazon` keeps all of
them (the 5-core removes nothing):

    python scripts/amazon_sample.py --preset content-signal --out /tmp/content-signal/raw
    cllm4rec prepare amazon --reviews /tmp/content-signal/raw/reviews_Beauty_5.json.gz \\
        --meta /tmp/content-signal/raw/meta_Beauty.json.gz --name content-signal

--users, --products, --themes and --on-taste change the planted sizes (e.g. a small copy for tests).
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
import string
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

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
    helpful = [h := rng.randint(0, 3), h + rng.randint(0, 2)]
    text = f"{rng.choice(OPENINGS)} I bought the {item['kind'].lower()} and {phrase}."
    overall = float(rng.choice([4, 5, 5]) if happy else rng.choice([2, 3]))
    summary = f"{rng.choice(HAPPY if happy else UNHAPPY)} {item['kind'].lower()}"
    return _record(user, name, item["meta"]["asin"], day, helpful, text, overall, summary)


def _record(user: str, name: str, asin: str, day: int, helpful: list[int], text: str, overall: float,
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


def _name(rng: random.Random) -> str:
    return rng.choice(NAMES) + rng.choice(["", f" {rng.choice(string.ascii_uppercase)}."])


def _lines(reviews: list[dict], metas: list[dict]) -> tuple[list[str], list[str]]:
    """Reviews as JSON lines grouped by asin (then time, reviewer); metadata as dict literals by asin."""
    reviews = sorted(reviews, key=lambda r: (r["asin"], r["unixReviewTime"], r["reviewerID"]))
    return [json.dumps(r) for r in reviews], [repr(m) for m in sorted(metas, key=lambda m: m["asin"])]


def sample_lines(seed: int = 0, planted: Planted | None = None) -> tuple[list[str], list[str]]:
    """The review lines (JSON) and metadata lines (Python dict literals) of the sample.

    planted: None → the tutorial sample; else the content-signal variant with these parameters.
    """
    if planted is not None:
        sample = planted_sample(seed, planted)
        return sample.review_lines, sample.meta_lines
    rng = random.Random(seed)
    items = _catalogue(rng)
    reviewed = [it for it in items if it["reviewed"]]
    by_category = {c: [it for it in reviewed if it["category"] == c] for c in CATEGORIES}
    reviews, users = [], set()
    for shopper in range(SHOPPERS + CASUAL_SHOPPERS):
        user = _code(rng, "A", 13, users)
        name = _name(rng)
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
    return _lines(reviews, [it["meta"] for it in items])


# ---- preset content-signal: themes planted in item texts and reviews (see the module docstring) ----

THEMES = ["vanilla", "coconut", "lavender", "lemon", "mint", "honey", "almond", "cherry", "peach", "cedar",
          "orange", "ginger", "cinnamon", "mango", "olive", "lime", "sage", "coffee", "strawberry", "eucalyptus",
          "caramel", "cucumber", "pear", "cocoa", "rose", "apple", "pine", "oat", "tea", "milk"]
KINDS = {  # product kind → category path: noise, drawn independently of the themes
    "body lotion": ["Beauty", "Skin Care", "Body", "Lotions"],
    "hand cream": ["Beauty", "Skin Care", "Hands & Nails", "Hand Creams"],
    "lip balm": ["Beauty", "Skin Care", "Lip Care", "Balms"],
    "face mask": ["Beauty", "Skin Care", "Face", "Masks"],
    "body wash": ["Beauty", "Bath & Body", "Cleansers", "Body Washes"],
    "bar soap": ["Beauty", "Bath & Body", "Cleansers", "Soaps"],
    "body scrub": ["Beauty", "Bath & Body", "Scrubs & Body Treatments"],
    "shampoo": ["Beauty", "Hair Care", "Shampoos"],
    "conditioner": ["Beauty", "Hair Care", "Conditioners"],
    "body mist": ["Beauty", "Fragrance", "Body Mists"],
}
BRANDS = ["Meadow Lane", "Harbor Naturals", "Willow & Stone", "Blue Hill", "Silver Brook", "Golden Hour",
          "Field Day", "North Shore", "Quiet Grove", "Bright Morning"]
SIZES = ["1 oz", "1.7 oz", "3.4 oz", "8 fl oz", "12 fl oz"]
FILLERS = ["Gentle enough for daily use", "Made in small batches without parabens", "Suitable for all skin types",
           "A light texture that absorbs quickly", "Cruelty free and vegan", "Easy to pack for travel"]
TASTE_LINES = ["I always look for {}.", "I am a big fan of {}.", "Anything with {} is my thing.",
               "My favourite notes are {}.", "I love products with {}."]
PRAISE = ["smells wonderful", "is just right", "lasts all day", "is not too strong", "feels so fresh"]
GRIPES = ["fades too quickly", "is a bit too strong", "smells artificial"]
TASTE_WEIGHTS = {2: (0.6, 0.4), 3: (0.5, 0.3, 0.2)}


class Planted(NamedTuple):
    """Sizes and strengths of the content-signal preset (defaults: the documented dataset).

    A NamedTuple, not a dataclass: the tutorial test loads this script without registering it as a module.
    """

    users: int = 600
    products: int = 400
    themes: int = 20
    on_taste: float = 0.8  # probability that a pick (or a top-up reviewer) comes from the user's themes
    per_user: tuple[int, int] = (5, 12)  # reviews per user before the top-up (uniform)
    core: int = 5  # every product is topped up to this many reviewers (the Amazon 5-core survives)
    popularity_exponent: float = 0.8  # product weight 1/(rank+1)**exponent over a random ranking

    def check(self) -> Planted:
        """self, or a ValueError naming the first parameter out of range."""
        if not 2 <= self.themes <= len(THEMES):
            raise ValueError(f"themes must be in 2..{len(THEMES)}, got {self.themes}")
        if self.products < 4 * self.themes:
            raise ValueError(f"products must be at least 4 per theme ({4 * self.themes}), got {self.products}")
        if not self.core <= self.per_user[0] <= self.per_user[1] <= self.products // 4:
            raise ValueError(f"reviews per user {self.per_user} must lie in {self.core}..{self.products // 4}")
        if self.users < 2 * self.core * self.themes:
            raise ValueError(f"users must be at least {2 * self.core} per theme ({2 * self.core * self.themes}),"
                             f" got {self.users}")
        if not 0.0 <= self.on_taste <= 1.0:
            raise ValueError(f"on_taste must be in [0, 1], got {self.on_taste}")
        return self


PRESETS: dict[str, Planted | None] = {"tutorial": None, "content-signal": Planted()}


class PlantedSample(NamedTuple):
    """The content-signal files' lines and their ground truth (tastes in weight order)."""

    review_lines: list[str]
    meta_lines: list[str]
    themes: list[str]
    item_themes: dict[str, list[str]]  # asin → its 1 or 2 themes
    user_tastes: dict[str, list[str]]  # reviewerID → its 2 or 3 themes

    def truth_json(self) -> str:
        return json.dumps({"themes": self.themes, "items": self.item_themes, "users": self.user_tastes},
                          indent=1, sort_keys=True) + "\n"


def _and(words: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _planted_catalogue(rng: random.Random, spec: Planted, themes: list[str]) -> list[dict]:
    """Products with 1-2 themes (primary themes spread evenly) and a Zipf popularity over a random ranking."""
    ranks = list(range(spec.products))
    rng.shuffle(ranks)
    items, taken = [], set()
    for j in range(spec.products):
        mine = [themes[j % len(themes)]]
        if rng.random() < 0.5:
            mine.append(rng.choice([t for t in themes if t != mine[0]]))
        kind, brand, size = rng.choice(list(KINDS)), rng.choice(BRANDS), rng.choice(SIZES)
        items.append({
            "themes": mine, "kind": kind, "popularity": 1.0 / (ranks[j] + 1) ** spec.popularity_exponent,
            "meta": {
                "asin": _code(rng, "B00", 7, taken),
                "title": f"{brand} {kind.title()} with {_and(mine)}, {size}",
                "price": round(rng.uniform(4, 40), 2),
                "salesRank": {"Beauty": rng.randint(1_000, 300_000)},
                "brand": brand,
                "categories": [KINDS[kind]],
                "description": f"<p>A {kind} made with {_and(mine)}.</p> {rng.choice(FILLERS)}.",
            },
        })
    return items


def _planted_review(rng: random.Random, user: dict, item: dict, day: int) -> dict:
    """A review that states all the user's tastes, then the theme it shares with the product (or the product's)."""
    shared = [t for t in user["tastes"] if t in item["themes"]]
    happy = bool(shared) and rng.random() < 0.85
    text = rng.choice(TASTE_LINES).format(_and(user["tastes"]))
    if shared:
        theme = shared[0]
        text += f" The {theme} in this {item['kind']} {rng.choice(PRAISE if happy else GRIPES)}."
        summary = f"{rng.choice(HAPPY if happy else UNHAPPY)} {theme} {item['kind']}"
        overall = float(rng.choice([4, 5, 5]) if happy else 3)
    else:
        text += f" This {item['kind']} with {_and(item['themes'])} was not for me."
        summary = "Not for me"
        overall = float(rng.choice([2, 3]))
    helpful = [h := rng.randint(0, 3), h + rng.randint(0, 2)]
    return _record(user["id"], user["name"], item["meta"]["asin"], day, helpful, text, overall, summary)


def planted_sample(seed: int = 0, spec: Planted = Planted()) -> PlantedSample:
    """The content-signal variant: lines of both files and the planted themes and tastes."""
    spec.check()
    rng = random.Random(seed)
    themes = THEMES[:spec.themes]
    items = _planted_catalogue(rng, spec, themes)
    by_theme = {t: [j for j, it in enumerate(items) if t in it["themes"]] for t in themes}
    weights = [it["popularity"] for it in items]
    users, taken = [], set()
    for u in range(spec.users):
        k = rng.choice([2, 3])
        tastes = [themes[u % len(themes)]] + rng.sample([t for t in themes if t != themes[u % len(themes)]], k - 1)
        user = {"id": _code(rng, "A", 13, taken), "name": _name(rng), "tastes": tastes, "items": []}
        n = rng.randint(*spec.per_user)
        while len(user["items"]) < n:
            if rng.random() < spec.on_taste:
                pool = by_theme[rng.choices(tastes, weights=TASTE_WEIGHTS[k])[0]]
                j = rng.choices(pool, weights=[weights[i] for i in pool])[0]
            else:
                j = rng.choices(range(len(items)), weights=weights)[0]
            if j not in user["items"]:
                user["items"].append(j)
        users.append(user)
    counts = [0] * len(items)
    for user in users:
        for j in user["items"]:
            counts[j] += 1
    for j, item in enumerate(items):  # top up the long tail: fans of its themes with probability on_taste
        if counts[j] >= spec.core:
            continue
        while counts[j] < spec.core:
            fan = rng.random() < spec.on_taste
            user = users[rng.randrange(len(users))]
            if j not in user["items"] and (not fan or set(user["tastes"]) & set(item["themes"])):
                user["items"].append(j)
                counts[j] += 1
    reviews = []
    for user in users:
        rng.shuffle(user["items"])  # top-ups anywhere in the user's history, not at its end
        day = rng.randint(0, 3 * 365)
        for j in user["items"]:
            day += rng.randint(1, 40)
            reviews.append(_planted_review(rng, user, items[j], day))
    review_lines, meta_lines = _lines(reviews, [it["meta"] for it in items])
    return PlantedSample(review_lines, meta_lines, themes,
                         {it["meta"]["asin"]: it["themes"] for it in items},
                         {u["id"]: u["tastes"] for u in users})


def _write_gzip(path: Path, lines: list[str]) -> None:
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    with atomic_file(path) as tmp:  # never a half-written file under the final name
        tmp.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))  # mtime 0: same bytes every run


def write_sample(out: Path, seed: int = 0, planted: Planted | None = None) -> tuple[Path, ...]:
    """Write reviews_Beauty_5.json.gz and meta_Beauty.json.gz into `out`; returns their paths.

    planted: the content-signal variant; planted_truth.json is written too, and its path returned third.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "reviews_Beauty_5.json.gz", out / "meta_Beauty.json.gz"
    if planted is None:
        lines = sample_lines(seed)
    else:
        sample = planted_sample(seed, planted)
        lines = sample.review_lines, sample.meta_lines
    for path, file_lines in zip(paths, lines):
        _write_gzip(path, file_lines)
    if planted is None:
        return paths
    truth = out / "planted_truth.json"
    with atomic_file(truth) as tmp:
        tmp.write_text(sample.truth_json(), encoding="utf-8")
    return (*paths, truth)


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
    paths = write_sample(args.out, args.seed, spec)
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
