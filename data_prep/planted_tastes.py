"""The content-signal sample: users' tastes planted in the item texts and reviews.

A dataset on which a recommender that reads text (CLLM4Rec) should beat the same model without
text (its LLM-CF ablation): the users' tastes are written in the item texts and in the reviews,
while the interaction graph alone says little about the many long-tail items.

- Themes. 20 scent/ingredient words (`THEMES`: vanilla, coconut, lavender, ...; up to 30 with
  `Planted.themes`), lower case, each one token (with its leading space) of the SmolLM2 tokenizer.
- Items (400). Each product has one theme (half of them two), primary themes spread evenly.
  Its title and description name its themes, e.g. "Meadow Lane Body Lotion with vanilla and
  coconut, 8 fl oz" / "A body lotion made with vanilla and coconut. Gentle enough for daily use.";
  brand, kind (body lotion, shampoo, ...), size and category path are noise, drawn independently
  of the themes, and contain no theme word.
- Users (600). Each has a taste for 2 or 3 themes with weights (0.6, 0.4) or (0.5, 0.3, 0.2);
  primary tastes are spread evenly over the themes.
- Interactions. A user reviews 5-12 products; each pick is, with probability 0.8 (`on_taste`),
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
- Ground truth. planted_truth.json (written next to the two files; `cllm4rec prepare` ignores
  it) lists the themes, each asin's themes and each reviewerID's tastes, in weight order.

With the defaults (`Planted()`, seed 0) the files hold 600 users, 400 items and 5,254 interactions
(per item: min 5, median 8, max 159; 187 items with at most 7), and `cllm4rec prepare amazon` keeps
all of them (the 5-core removes nothing). The files are those of data_prep/synthetic_amazon.py (the
2014 dump format); `scripts/amazon_sample.py --preset content-signal` writes them (`write_planted`).
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import NamedTuple

from data_prep.atomic import atomic_write_text
from data_prep.synthetic_amazon import (
    HAPPY,
    UNHAPPY,
    file_lines,
    fresh_code,
    meta_record,
    review_record,
    reviewer_name,
    write_files,
)


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
    """Sizes and strengths of the content-signal sample (defaults: the documented dataset)."""

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
        meta = meta_record(rng, taken, f"{brand} {kind.title()} with {_and(mine)}, {size}", brand, KINDS[kind],
                           max_price=40)
        meta["description"] = f"<p>A {kind} made with {_and(mine)}.</p> {rng.choice(FILLERS)}."
        items.append({"themes": mine, "kind": kind, "popularity": 1.0 / (ranks[j] + 1) ** spec.popularity_exponent,
                      "meta": meta})
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
    return review_record(user["id"], user["name"], item["meta"]["asin"], day, helpful, text, overall, summary)


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
        user = {"id": fresh_code(rng, "A", 13, taken), "name": reviewer_name(rng), "tastes": tastes, "items": []}
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
    review_lines, meta_lines = file_lines(reviews, [it["meta"] for it in items])
    return PlantedSample(review_lines, meta_lines, themes,
                         {it["meta"]["asin"]: it["themes"] for it in items},
                         {u["id"]: u["tastes"] for u in users})


def write_planted(out: Path, seed: int = 0, spec: Planted = Planted()) -> tuple[Path, Path, Path]:
    """Write the content-signal sample's two files and planted_truth.json into `out`; returns their paths."""
    sample = planted_sample(seed, spec)
    reviews, meta = write_files(out, sample.review_lines, sample.meta_lines)
    truth = Path(out) / "planted_truth.json"
    atomic_write_text(truth, sample.truth_json())
    return reviews, meta, truth
