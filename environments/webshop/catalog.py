"""WebShop's catalog and goals, loaded from the original's files exactly as its ``load_products`` does.

Files of a data directory (the names the original's ``web_agent_site/utils.py`` and ``setup.sh`` use):

* ``items_shuffle.json`` (full catalog, ~1.18M products) or ``items_shuffle_1000.json``: a JSON list of
  scraped products (``asin``, ``name``, ``full_description``, ``small_description``, ``pricing``,
  ``customization_options``, ``images``, ``category``, ``query``, ``product_category``...);
* ``items_ins_v2.json`` or ``items_ins_v2_1000.json``: ``{asin: {"attributes": [...], "instruction": str,
  "instruction_attributes": [...]}}``, the product attributes and synthetic instructions;
* ``items_human_ins.json``: ``{asin: [{"instruction": str, "instruction_attributes": [...],
  "instruction_options": [...]}, ...]}``, the human-written instructions (the benchmark's goals);
* ``reviews.json`` (optional): ``[{"asin", "reviews": [...], "average_rating"}]``.

Derived fields follow ``load_products``: ``Title`` = name, ``Description`` = full_description,
``BulletPoints`` = small_description as a list, ``pricing`` parsed from ``"$a"`` or ``"$a - $b"`` (none
-> ``[100.0]``), ``Price`` = ``"$a"`` or ``"$a to $b"``, option names and values lower-cased with ``/``
shown as `` | ``, ``Attributes`` (``["DUMMY_ATTR"]`` when the product has none), ``query`` lower-cased.
Products whose asin is ``nan`` or longer than 10 characters, and repeated asins, are dropped as in the
original; products that would crash the original loader (missing or ill-typed fields, unparsable
prices) are skipped and counted.

Randomness: the original draws a price inside each price range, and each goal's price bound, from
Python's unseeded global RNG, then shuffles the goals with ``random.seed(233)``. Here the draws come,
in the same order, from ``random.Random(price_seed)``, so a catalog is reproducible; the goal order is
the original's (``random.Random(233).shuffle`` is the same permutation as ``random.seed(233);
random.shuffle``). A task id is the index of a goal in that shuffled list.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import random
import re
import warnings
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from agentrl.errors import AgentrlError

#: Goal price bounds are drawn from these (the original's ``PRICE_RANGE``).
PRICE_RANGE = [10.0 * i for i in range(1, 100)]
GOAL_SHUFFLE_SEED = 233
#: The original split: goals [0, 500) test, [500, 1500) eval, the rest train.
BENCHMARK_SPLIT_BOUNDS = (500, 1500)
#: Human instructions in the full benchmark; the built-in catalog scales the split bounds by n / this.
BENCHMARK_HUMAN_GOALS = 12_087
ENV_VAR = "AGENTRL_WEBSHOP_DATA"
FETCH_HINT = "agentrl data fetch webshop"

PRODUCT_FILES = ("items_shuffle.json", "items_shuffle_1000.json")
ATTRIBUTE_FILES = ("items_ins_v2.json", "items_ins_v2_1000.json")
HUMAN_FILE = "items_human_ins.json"
REVIEW_FILE = "reviews.json"
BUILTIN_MARKER = "BUILTIN_CATALOG_NOT_THE_BENCHMARK.txt"  # see builtin.MARKER_FILE


class MissingCatalogError(AgentrlError, FileNotFoundError):
    """The WebShop data directory lacks the catalog files (the message says how to get them)."""


def default_data_root() -> Path:
    """``$AGENTRL_WEBSHOP_DATA``, else ``$AGENTRL_CACHE/webshop``, else ``~/.cache/agentrl/webshop``."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    cache = Path(os.environ.get("AGENTRL_CACHE", Path.home() / ".cache" / "agentrl"))
    return cache / "webshop"


def find_files(root: Path) -> dict[str, Path | None]:
    """The catalog files present under ``root`` (the full catalog preferred over the 1,000-product one)."""
    root = Path(root)

    def first(names: tuple[str, ...]) -> Path | None:
        return next((root / n for n in names if (root / n).is_file()), None)

    return {
        "products": first(PRODUCT_FILES),
        "attributes": first(ATTRIBUTE_FILES),
        "human": first((HUMAN_FILE,)),
        "reviews": first((REVIEW_FILE,)),
    }


def _missing_message(root: Path, missing: list[str]) -> str:
    return (
        f"WebShop catalog not found in {root} (missing: {', '.join(missing)}); run `{FETCH_HINT}` "
        f"(or point data_dir / ${ENV_VAR} at a directory with the original files), "
        "or use data_dir='builtin' for the small built-in catalog (not the benchmark)"
    )


# -- load_products -------------------------------------------------------------------------------


def parse_pricing(pricing: Any) -> tuple[list[float], str]:
    """``(pricing, price_tag)`` as the original derives them from the scraped price text."""
    if pricing is None or not pricing:
        return [100.0], "$100.0"
    values = [float(Decimal(re.sub(r"[^\d.]", "", part))) for part in pricing.split("$")[1:]]
    if len(values) == 1:
        return values, f"${values[0]}"
    return values[:2], f"${values[0]} to ${values[1]}"


def _process_product(p: dict[str, Any], attributes: dict, human_ins: dict, reviews: dict, human_goals: bool) -> dict:
    asin = p["asin"]
    out = dict(p)
    for key in ("product_information", "brand", "brand_url", "list_price", "availability_quantity",
                "availability_status", "total_reviews", "total_answered_questions", "seller_id", "seller_name",
                "fulfilled_by_amazon", "fast_track_message", "aplus_present", "small_description_old"):  # fmt: skip
        out.pop(key, None)
    for key in ("name", "full_description", "category", "query", "product_category"):
        if not isinstance(p[key], str):
            raise TypeError(f"{key} is not a string")
    out["Title"] = p["name"]
    out["Description"] = p["full_description"]
    review_list, rating = reviews.get(asin, ([], "N.A."))
    out["Reviews"] = [_review(r) for r in review_list]
    out["Rating"] = rating
    bullets = p["small_description"]
    out["BulletPoints"] = [str(b) for b in bullets] if isinstance(bullets, list) else [str(bullets)]
    out["pricing"], out["Price"] = parse_pricing(p.get("pricing"))
    options: dict[str, list[str]] = {}
    option_to_image: dict[str, Any] = {}
    customization = p["customization_options"]
    if customization:
        for option_name, contents in customization.items():
            if contents is None:
                continue
            values = []
            for content in contents:
                value = content["value"].strip().replace("/", " | ").lower()
                values.append(value)
                option_to_image[value] = content.get("image")
            options[option_name.lower()] = values
    out["options"] = options
    out["option_to_image"] = option_to_image
    entry = attributes.get(asin)
    out["Attributes"] = list(entry["attributes"]) if isinstance(entry, dict) and "attributes" in entry else ["DUMMY_ATTR"]
    if human_goals:
        if asin in human_ins:
            out["instructions"] = human_ins[asin]
    else:
        entry = entry if isinstance(entry, dict) else {}
        out["instruction_text"] = entry.get("instruction")
        out["instruction_attributes"] = entry.get("instruction_attributes")
    images = p.get("images") or [None]
    out["MainImage"] = images[0]
    out["query"] = p["query"].lower().strip()
    return out


def _review(r: dict[str, Any]) -> dict[str, Any]:
    r = dict(r)
    if "score" not in r:
        r["score"] = r.pop("stars", 0)
    r["body"] = r.pop("review") if "review" in r else ""  # the original blanks a review without 'review'
    r.setdefault("title", "")
    return r


def load_products(
    items: list[dict[str, Any]],
    attributes: dict[str, Any],
    human_ins: dict[str, Any] | None = None,
    reviews: list[dict[str, Any]] | None = None,
    *,
    num_products: int | None = None,
    human_goals: bool = True,
) -> tuple[list[dict[str, Any]], int]:
    """The original's ``load_products`` on already-parsed JSON; returns ``(products, n_malformed)``."""
    review_map = {}
    for r in reviews or []:
        if isinstance(r, dict) and "asin" in r:
            review_map[r["asin"]] = (r.get("reviews") or [], r.get("average_rating", "N.A."))
    if num_products is not None:
        items = items[:num_products]
    seen: set[str] = set()
    products, malformed = [], 0
    for p in items:
        try:
            asin = p["asin"]
            if not isinstance(asin, str):
                raise TypeError("asin is not a string")
        except (KeyError, TypeError):
            malformed += 1
            continue
        if asin == "nan" or len(asin) > 10 or asin in seen:
            continue
        try:
            product = _process_product(p, attributes, human_ins or {}, review_map, human_goals)
        except (KeyError, TypeError, AttributeError, ArithmeticError, ValueError, IndexError):
            malformed += 1
            continue
        seen.add(asin)
        products.append(product)
    return products, malformed


def generate_product_prices(products: list[dict[str, Any]], rng: random.Random) -> dict[str, float]:
    """One price per product: the single price, or a uniform draw inside its range (as the original)."""
    prices = {}
    for p in products:
        pricing = p["pricing"]
        if not pricing:
            price = 100.0
        elif len(pricing) == 1:
            price = pricing[0]
        else:
            price = rng.uniform(*pricing[:2])
        prices[p["asin"]] = price
    return prices


def _price_bound(price: float, rng: random.Random) -> tuple[float, str]:
    first = bisect.bisect_right(PRICE_RANGE, price)  # PRICE_RANGE is sorted: the first 4 bounds above price
    candidates = PRICE_RANGE[first : first + 4]
    if len(candidates) >= 2:
        _, upper = sorted(rng.sample(candidates, 2))
        return upper, f", and price lower than {upper:.2f} dollars"
    return 1000000, ""


def get_human_goals(products: list[dict], prices: dict[str, float], rng: random.Random) -> tuple[list[dict], int]:
    """Goals from human instructions; instructions without attributes are skipped (and counted)."""
    goals, skipped = [], 0
    for item in products:
        for ins in item.get("instructions") or []:
            try:
                attributes = list(ins["instruction_attributes"])
                instruction = str(ins["instruction"])
                goal_options = ins.get("instruction_options", [])
                if not isinstance(goal_options, (list, dict)):
                    raise TypeError("instruction_options")
            except (KeyError, TypeError):
                skipped += 1
                continue
            if not attributes:
                skipped += 1
                continue
            upper, price_text = _price_bound(prices[item["asin"]], rng)
            goals.append({
                "asin": item["asin"], "category": item["category"], "query": item["query"], "name": item["name"],
                "product_category": item["product_category"], "instruction_text": instruction.strip(".") + price_text,
                "attributes": attributes, "price_upper": upper, "goal_options": goal_options, "weight": 1,
            })  # fmt: skip
    return goals, skipped


def get_synthetic_goals(products: list[dict], prices: dict[str, float], rng: random.Random) -> tuple[list[dict], int]:
    """One goal per option combination of each product with a synthetic instruction (as the original)."""
    goals, skipped = [], 0
    counts: dict[str, int] = {}
    for product in products:
        if product.get("instruction_text") is None:
            continue
        attributes = product.get("instruction_attributes") or []
        if not attributes:
            skipped += 1
            continue
        upper, price_text = _price_bound(prices[product["asin"]], rng)
        options = product["options"]
        names = sorted(options)
        for combination in itertools.product(*(options[n] for n in names)):
            goal_options = dict(zip(names, combination, strict=True))
            option_text = ", and ".join(f"{k}: {v}" for k, v in goal_options.items())
            option_text = " with " + option_text if option_text else ""
            goals.append({
                "asin": product["asin"], "category": product["category"], "query": product["query"],
                "product_category": product["product_category"],
                "instruction_text": f"{product['instruction_text']}{option_text}{price_text}",
                "attributes": attributes, "price_upper": upper, "goal_options": goal_options, "name": product["Title"],
            })  # fmt: skip
            for att in attributes:
                counts[att] = counts.get(att, 0) + 1
    for goal in goals:
        goal["weight"] = sum(1.0 / counts[a] for a in goal["attributes"]) / len(goal["attributes"])
    return goals, skipped


# -- the catalog -----------------------------------------------------------------------------------


@dataclass
class Catalog:
    """Products, prices and the ordered goal list of one data source (read-only once built)."""

    name: str
    is_benchmark: bool
    products: list[dict[str, Any]]
    prices: dict[str, float]
    goals: list[dict[str, Any]]
    human_goals: bool
    split_bounds: tuple[int, int]
    skipped_products: int = 0
    skipped_goals: int = 0
    by_asin: dict[str, dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.by_asin = {p["asin"]: p for p in self.products}

    def split_range(self, split: str) -> range:
        """Goal indices of ``split`` (``train``, ``valid``/``eval``, ``test``)."""
        test_end, eval_end = (min(b, len(self.goals)) for b in self.split_bounds)
        if split == "test":
            return range(0, test_end)
        if split in ("valid", "eval"):
            return range(test_end, eval_end)
        if split == "train":
            return range(eval_end, len(self.goals))
        raise ValueError(f"unknown split {split!r}; choose one of train, valid (the original's eval), test")


def scaled_split_bounds(n_goals: int) -> tuple[int, int]:
    """The original's 500 / 1,000 / rest split scaled to ``n_goals`` (for catalogs smaller than the benchmark)."""
    test_end = max(1, round(n_goals * BENCHMARK_SPLIT_BOUNDS[0] / BENCHMARK_HUMAN_GOALS))
    eval_end = max(test_end + 1, round(n_goals * BENCHMARK_SPLIT_BOUNDS[1] / BENCHMARK_HUMAN_GOALS))
    return test_end, eval_end


def build_catalog(
    items: list[dict[str, Any]],
    attributes: dict[str, Any],
    human_ins: dict[str, Any] | None,
    reviews: list[dict[str, Any]] | None = None,
    *,
    name: str,
    is_benchmark: bool,
    human_goals: bool = True,
    num_products: int | None = None,
    price_seed: int = 0,
    split_bounds: tuple[int, int] | None = None,
) -> Catalog:
    """Products -> prices -> goals -> the seed-233 goal shuffle, in the original's order of RNG draws."""
    products, malformed = load_products(
        items, attributes, human_ins, reviews, num_products=num_products, human_goals=human_goals
    )
    if malformed:
        warnings.warn(f"WebShop catalog {name}: skipped {malformed} malformed product(s)", stacklevel=2)
    rng = random.Random(price_seed)
    prices = generate_product_prices(products, rng)
    goals, skipped_goals = (get_human_goals if human_goals else get_synthetic_goals)(products, prices, rng)
    random.Random(GOAL_SHUFFLE_SEED).shuffle(goals)
    bounds = split_bounds or (BENCHMARK_SPLIT_BOUNDS if is_benchmark else scaled_split_bounds(len(goals)))
    return Catalog(name, is_benchmark, products, prices, goals, human_goals, bounds, malformed, skipped_goals)


def _read_json(path: Path, kind: type) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); fetch it again with `{FETCH_HINT}`") from None
    if not isinstance(doc, kind):
        raise ValueError(f"{path} must hold a JSON {'list' if kind is list else 'object'}, got {type(doc).__name__}")
    return doc


def load_catalog(
    root: str | Path,
    *,
    human_goals: bool = True,
    num_products: int | None = None,
    price_seed: int = 0,
) -> Catalog:
    """Load the original's files from ``root``; raise :class:`MissingCatalogError` naming what to do."""
    root = Path(root).expanduser()
    files = find_files(root)
    needed = ["products", "attributes"] + (["human"] if human_goals else [])
    missing = [k for k in needed if files[k] is None]
    if missing:
        names = {"products": PRODUCT_FILES[1], "attributes": ATTRIBUTE_FILES[1], "human": HUMAN_FILE}
        raise MissingCatalogError(_missing_message(root, [names[k] for k in missing]))
    items = _read_json(files["products"], list)
    attributes = _read_json(files["attributes"], dict)
    human = _read_json(files["human"], dict) if human_goals else None
    reviews = _read_json(files["reviews"], list) if files["reviews"] else None
    is_benchmark = not (root / BUILTIN_MARKER).exists()  # a written copy of the built-in catalog is no benchmark
    return build_catalog(
        items, attributes, human, reviews, name=str(root), is_benchmark=is_benchmark,
        human_goals=human_goals, num_products=num_products, price_seed=price_seed,
    )  # fmt: skip
