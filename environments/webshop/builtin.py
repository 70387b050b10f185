"""A small, deterministic catalog in the original WebShop file format. NOT the WebShop benchmark.

It exists so that tests, the quickstart and CI run offline: products, attributes, human-style
instructions and reviews are generated from a seed by ``random.Random(seed)`` over fixed word lists
(five categories as in WebShop: fashion, makeup, electronics, furniture, food; 30 product types with
their own attributes, colours, sizes, flavours and price ranges). Results on it are not comparable
with published WebShop numbers.

:func:`raw_catalog` returns the four JSON documents (``items_shuffle``, ``items_ins_v2``,
``items_human_ins``, ``reviews``) as Python objects; :func:`write_catalog` writes them under the
original file names plus a marker file, so the env's file loader reads them like the real data.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path
from typing import Any

#: Written next to the generated files; a directory holding it is loaded as "not the benchmark".
MARKER_FILE = "BUILTIN_CATALOG_NOT_THE_BENCHMARK.txt"
DEFAULT_PRODUCTS = 600
DEFAULT_SEED = 0
INSTRUCTIONS_PER_PRODUCT = 2

_COLORS = ["black", "white", "navy blue", "grey", "red", "pink", "beige", "dark brown", "olive green",
           "light blue", "burgundy", "black/white", "rose gold", "silver", "purple", "khaki"]  # fmt: skip
_CLOTHES = ["x-small", "small", "medium", "large", "x-large", "xx-large"]
_SHOES = ["6", "7", "7.5", "8", "8.5", "9", "9.5", "10", "11", "12"]
_PACKS = ["pack of 1", "pack of 2", "pack of 3", "pack of 4", "pack of 6", "pack of 12"]
_VOLUMES = ["1 fl oz", "1.7 fl oz", "3.4 fl oz", "6.8 fl oz", "8 ounce", "16 ounce"]
_WEIGHTS = ["8 ounce", "12 ounce", "1 pound", "2 pound", "5 pound"]
_LENGTHS = ["3 feet", "6 feet", "10 feet", "15 feet", "25 feet"]
_FURN = ["small", "medium", "large", "2 tier", "3 tier", "4 tier", "5 tier"]
_RUGS = ["2' x 3'", "3' x 5'", "4' x 6'", "5' x 7'", "8' x 10'"]
_BEDS = ["twin", "full", "queen", "king", "california king"]
_FLAVORS = ["vanilla", "chocolate", "strawberry", "salted caramel", "original", "mint", "peanut butter", "honey"]
_SHADES = ["nude", "ruby red", "coral", "berry", "mauve", "plum", "peach", "classic red"]

# category, query, product_category, title noun, attributes, options {name: values}, price range
_TYPES: list[tuple[str, str, str, str, list[str], dict[str, list[str]], tuple[float, float]]] = [
    ("fashion", "men's running shoes", "Clothing, Shoes & Jewelry › Men › Shoes › Athletic › Running",
     "Men's Running Shoes", ["non slip", "rubber sole", "lightweight", "breathable mesh", "arch support",
     "memory foam", "lace up", "shock absorbing"], {"color": _COLORS, "size": _SHOES}, (25, 90)),
    ("fashion", "women's t-shirts", "Clothing, Shoes & Jewelry › Women › Clothing › Tops, Tees & Blouses › T-Shirts",
     "Women's T-Shirt", ["short sleeve", "machine wash", "cotton spandex", "relaxed fit", "v neck", "crew neck",
     "tumble dry", "soft material"], {"color": _COLORS, "size": _CLOTHES}, (9, 30)),
    ("fashion", "men's jeans", "Clothing, Shoes & Jewelry › Men › Clothing › Jeans",
     "Men's Jeans", ["slim fit", "straight leg", "machine wash", "stretch denim", "button closure", "regular fit",
     "zipper fly", "classic fit"], {"color": _COLORS, "size": ["30w x 30l", "32w x 30l", "32w x 32l", "34w x 32l",
     "36w x 32l", "38w x 34l"]}, (20, 70)),
    ("fashion", "women's dresses", "Clothing, Shoes & Jewelry › Women › Clothing › Dresses › Casual",
     "Women's Summer Dress", ["long sleeve", "high waist", "hand wash", "polyester spandex", "daily wear",
     "button closure", "elastic waist", "flowy"], {"color": _COLORS, "size": _CLOTHES}, (18, 60)),
    ("fashion", "hoodies for men", "Clothing, Shoes & Jewelry › Men › Clothing › Active › Hoodies",
     "Pullover Hoodie", ["fleece lined", "drawstring closure", "machine wash", "kangaroo pocket", "long sleeve",
     "cotton blend", "warm", "relaxed fit"], {"color": _COLORS, "size": _CLOTHES}, (20, 55)),
    ("fashion", "athletic socks", "Clothing, Shoes & Jewelry › Men › Clothing › Socks › Athletic",
     "Cushioned Athletic Socks", ["moisture wicking", "arch support", "machine wash", "cushioned sole",
     "breathable", "cotton", "ankle length"], {"color": _COLORS, "size": _PACKS}, (8, 25)),
    ("makeup", "lipstick", "Beauty & Personal Care › Makeup › Lips › Lipstick",
     "Matte Lipstick", ["long lasting", "cruelty free", "paraben free", "highly pigmented", "moisturizing",
     "waterproof", "vegan", "smudge proof"], {"color": _SHADES}, (6, 28)),
    ("makeup", "face moisturizer", "Beauty & Personal Care › Skin Care › Face › Moisturizers › Creams",
     "Daily Face Moisturizer", ["hyaluronic acid", "fragrance free", "sensitive skin", "oil free", "spf 30",
     "anti aging", "dermatologist tested", "natural ingredients"], {"size": _VOLUMES}, (9, 45)),
    ("makeup", "nail polish", "Beauty & Personal Care › Foot, Hand & Nail Care › Nail Art & Polish › Nail Polish",
     "Gel Nail Polish", ["long lasting", "quick dry", "non toxic", "high gloss", "chip resistant", "easy apply",
     "vegan"], {"color": _SHADES + ["black", "white"], "size": _PACKS[:4]}, (5, 22)),
    ("makeup", "eyeshadow palette", "Beauty & Personal Care › Makeup › Eyes › Eyeshadow",
     "Eyeshadow Palette", ["highly pigmented", "long lasting", "blendable", "shimmer", "matte finish",
     "cruelty free", "travel size"], {"style": ["warm neutrals", "cool tones", "smoky", "sunset", "rose"]}, (8, 40)),
    ("makeup", "hair shampoo", "Beauty & Personal Care › Hair Care › Shampoo & Conditioner › Shampoos",
     "Sulfate Free Shampoo", ["sulfate free", "dry hair", "natural ingredients", "argan oil", "paraben free",
     "color safe", "tea tree"], {"size": _VOLUMES}, (7, 30)),
    ("makeup", "hair extensions", "Beauty & Personal Care › Hair Care › Hair Extensions, Wigs & Accessories › Extensions",
     "Clip in Hair Extensions", ["natural looking", "long lasting", "heat resistant", "clip in", "easy to use",
     "human hair", "straight"], {"color": ["jet black", "dark brown", "medium brown", "blonde", "auburn"],
     "size": ["14 inch", "18 inch", "22 inch"]}, (20, 80)),
    ("electronics", "wireless headphones", "Electronics › Headphones, Earbuds & Accessories › Headphones › Over-Ear",
     "Wireless Bluetooth Headphones", ["noise cancelling", "long battery life", "bluetooth 5.0", "built in microphone",
     "foldable", "hi fi sound", "fast charging"], {"color": ["black", "white", "silver", "navy blue", "rose gold"]},
     (25, 150)),
    ("electronics", "phone case", "Cell Phones & Accessories › Cases, Holsters & Sleeves › Basic Cases",
     "Shockproof Phone Case", ["shockproof", "slim", "wireless charging compatible", "raised edges",
     "scratch resistant", "clear back", "tpu bumper"], {"color": _COLORS[:10], "style": ["iphone 13", "iphone 14",
     "iphone 15", "galaxy s23", "pixel 8"]}, (7, 25)),
    ("electronics", "usb c cable", "Electronics › Computers & Accessories › Computer Accessories › Cables › USB Cables",
     "USB C Charging Cable", ["fast charging", "braided nylon", "data transfer", "durable", "tangle free",
     "gold plated"], {"color": ["black", "white", "grey", "red"], "size": _LENGTHS}, (6, 20)),
    ("electronics", "bluetooth speaker", "Electronics › Portable Audio & Video › Portable Speakers & Docks › Portable Bluetooth Speakers",
     "Portable Bluetooth Speaker", ["waterproof", "long battery life", "stereo sound", "built in microphone",
     "deep bass", "outdoor", "usb charging"], {"color": ["black", "blue", "red", "grey", "olive green"]}, (20, 120)),
    ("electronics", "wireless mouse", "Electronics › Computers & Accessories › Computer Accessories › Keyboards, Mice & Accessories › Mice",
     "Wireless Optical Mouse", ["ergonomic", "silent click", "usb receiver", "rechargeable", "adjustable dpi",
     "plug and play", "long battery life"], {"color": ["black", "white", "grey", "pink", "silver"]}, (9, 45)),
    ("electronics", "hdmi cable", "Electronics › Television & Video › Accessories › Cables › HDMI Cables",
     "High Speed HDMI Cable", ["4k", "high speed", "gold plated", "ethernet", "braided", "hdr support"],
     {"size": _LENGTHS}, (6, 30)),
    ("furniture", "office chair", "Home & Kitchen › Furniture › Home Office Furniture › Home Office Chairs › Desk Chairs",
     "Ergonomic Office Chair", ["lumbar support", "adjustable height", "high back", "breathable mesh",
     "swivel", "easy assembly", "padded armrests"], {"color": ["black", "grey", "white", "navy blue", "pink"]},
     (60, 300)),
    ("furniture", "bookshelf", "Home & Kitchen › Furniture › Home Office Furniture › Bookcases",
     "Wooden Bookshelf", ["easy assembly", "engineered wood", "open storage", "space saving", "sturdy",
     "living room", "rustic"], {"color": ["walnut", "white", "black", "oak", "espresso"], "size": _FURN[3:]},
     (40, 200)),
    ("furniture", "coffee table", "Home & Kitchen › Furniture › Living Room Furniture › Tables › Coffee Tables",
     "Modern Coffee Table", ["storage shelf", "easy assembly", "solid wood", "living room", "metal frame",
     "rustic", "round"], {"color": ["walnut", "white", "black", "oak", "grey"]}, (50, 250)),
    ("furniture", "bed frame", "Home & Kitchen › Furniture › Bedroom Furniture › Beds, Frames & Bases › Bed Frames",
     "Metal Platform Bed Frame", ["no box spring needed", "under bed storage", "noise free", "easy assembly",
     "heavy duty", "wooden slats"], {"size": _BEDS}, (90, 400)),
    ("furniture", "floor lamp", "Tools & Home Improvement › Lighting & Ceiling Fans › Lamps & Shades › Floor Lamps",
     "LED Floor Lamp", ["dimmable", "remote control", "energy efficient", "living room", "adjustable",
     "reading light", "modern"], {"color": ["black", "white", "gold", "silver", "bronze"]}, (30, 150)),
    ("furniture", "area rug", "Home & Kitchen › Home Décor Products › Area Rugs, Runners & Pads › Area Rugs",
     "Soft Area Rug", ["non slip", "machine washable", "living room", "stain resistant", "low pile", "shag",
     "easy clean"], {"color": ["grey", "beige", "navy blue", "ivory", "multicolor"], "size": _RUGS}, (25, 220)),
    ("food", "coffee beans", "Grocery & Gourmet Food › Beverages › Coffee, Tea & Cocoa › Coffee › Whole Coffee Beans",
     "Whole Bean Coffee", ["medium roast", "dark roast", "fair trade", "organic", "single origin", "low acid",
     "arabica"], {"size": _WEIGHTS}, (9, 40)),
    ("food", "green tea", "Grocery & Gourmet Food › Beverages › Coffee, Tea & Cocoa › Tea › Green",
     "Green Tea Bags", ["caffeine free", "organic", "non gmo", "gluten free", "antioxidant", "sugar free"],
     {"flavor name": ["jasmine", "mint", "lemon", "original", "honey"], "size": _PACKS}, (5, 25)),
    ("food", "granola bars", "Grocery & Gourmet Food › Snack Foods › Bars › Granola Bars",
     "Chewy Granola Bars", ["gluten free", "high protein", "low sugar", "non gmo", "whole grain", "kosher",
     "individually wrapped"], {"flavor name": _FLAVORS, "size": _PACKS}, (6, 30)),
    ("food", "olive oil", "Grocery & Gourmet Food › Pantry Staples › Cooking & Baking › Oils › Olive",
     "Extra Virgin Olive Oil", ["cold pressed", "organic", "first cold press", "non gmo", "kosher", "glass bottle"],
     {"size": ["8.5 fl oz", "16.9 fl oz", "25.3 fl oz", "33.8 fl oz", "1 gallon"]}, (9, 45)),
    ("food", "dark chocolate", "Grocery & Gourmet Food › Snack Foods › Candy & Chocolate › Chocolate Bars",
     "Dark Chocolate Bar", ["sugar free", "vegan", "gluten free", "fair trade", "keto friendly", "non gmo",
     "individually wrapped"], {"flavor name": ["sea salt", "almond", "mint", "orange", "raspberry", "original"],
     "size": _PACKS}, (4, 35)),
    ("food", "protein powder", "Health & Household › Diet & Sports Nutrition › Sports Nutrition › Protein › Whey",
     "Whey Protein Powder", ["gluten free", "low carb", "non gmo", "high protein", "keto friendly",
     "no artificial sweeteners", "grass fed"], {"flavor name": _FLAVORS, "size": _WEIGHTS[2:]}, (20, 70)),
]  # fmt: skip

_BRANDS = ["Acme", "Norvia", "Lumio", "Brightfield", "Kestrel", "Oakhaven", "Zephyra", "Tandem", "Velora",
           "Quillon", "Harbor & Pine", "Maple Row", "Sundial", "Corvid", "Nimbus", "Fernway", "Halcyon",
           "Ironbark", "Juniper Lane", "Solace"]  # fmt: skip
_LEADS = ["i am looking for", "i need", "i want to buy", "find me", "i'm searching for", "get me"]
_REVIEW_TITLES = ["Great value", "Exactly as described", "Not what I expected", "Would buy again",
                  "Decent for the price", "Love it"]  # fmt: skip
_REVIEW_BODIES = ["Arrived quickly and works well.", "The quality is better than I thought.",
                  "It is fine but the size runs a little small.", "My family loves it.",
                  "Good product, packaging could be better."]  # fmt: skip


def _asin(rng: random.Random, taken: set[str]) -> str:
    while True:
        asin = "B0" + "".join(rng.choices(string.ascii_uppercase + string.digits, k=8))
        if asin not in taken:
            taken.add(asin)
            return asin


def _option_phrase(name: str, value: str) -> str:
    if name == "color":
        return f"in {value} color"
    if name == "flavor name":
        return f"with {value} flavor"
    return f"{name} {value}" if name != "size" else f"size {value}"


def _product(rng: random.Random, asin: str, kind: tuple) -> tuple[dict[str, Any], list[str]]:
    category, query, product_category, noun, attr_pool, option_pool, (low, high) = kind
    attrs = rng.sample(attr_pool, rng.randint(3, min(5, len(attr_pool))))
    brand = rng.choice(_BRANDS)
    in_title = [a for a in attrs if a not in noun.lower()][: rng.randint(1, 2)] or attrs[:1]
    title = f"{brand} {noun}, {', '.join(a.title() for a in in_title)}"
    if rng.random() < 0.5:
        title += f" - {rng.choice(['Gift Idea', 'Everyday Use', 'Value Pack', '2024 Edition', 'Best Seller'])}"
    bullets = [f"{a.upper()}: this {noun.lower()} is {a}, made for everyday use." for a in attrs]
    rng.shuffle(bullets)
    description = (
        f"The {brand} {noun.lower()} combines {', '.join(attrs[:-1])} and {attrs[-1]}. "
        f"Part of our {category} line; designed in {rng.choice(['California', 'Oslo', 'Kyoto', 'Lisbon'])}."
    )
    options: dict[str, list[dict[str, Any]]] = {}
    for name, values in option_pool.items():
        chosen = rng.sample(values, rng.randint(min(3, len(values)), min(6, len(values))))
        options[name] = [{"value": v.title() if name == "color" else v, "image": f"https://example.invalid/{asin}/{i}.jpg"}
                         for i, v in enumerate(chosen)]  # fmt: skip
    price = round(rng.uniform(low, high), 2)
    roll = rng.random()
    if roll < 0.25:
        pricing = f"${price:.2f} - ${price * rng.uniform(1.1, 1.6):.2f}"
    elif roll < 0.28:
        pricing = ""  # no price listed: the original shows $100.0
    else:
        pricing = f"${price:.2f}"
    item = {
        "asin": asin, "category": category, "query": query, "product_category": product_category, "name": title,
        "full_description": description, "small_description": bullets, "pricing": pricing,
        "customization_options": options or None, "images": [f"https://example.invalid/{asin}/main.jpg"],
        "brand": brand, "list_price": "",
    }  # fmt: skip
    return item, attrs


def _instruction(rng: random.Random, item: dict[str, Any], attrs: list[str]) -> dict[str, Any]:
    chosen_attrs = rng.sample(attrs, rng.randint(1, min(3, len(attrs))))
    chosen_options = []
    phrases = []
    for name, contents in (item["customization_options"] or {}).items():
        if rng.random() < 0.85:
            value = rng.choice(contents)["value"].strip().replace("/", " | ").lower()
            chosen_options.append(value)
            phrases.append(_option_phrase(name, value))
    text = f"{rng.choice(_LEADS)} {' and '.join(chosen_attrs)} {item['query']}"
    if phrases:
        text += ", " + ", and ".join(phrases)
    return {"asin": item["asin"], "instruction": text, "instruction_attributes": chosen_attrs,
            "instruction_options": chosen_options}  # fmt: skip


def raw_catalog(
    n_products: int = DEFAULT_PRODUCTS, seed: int = DEFAULT_SEED, *, instructions: bool = True
) -> tuple[list[dict], dict[str, dict], dict[str, list[dict]], list[dict]]:
    """``(items_shuffle, items_ins_v2, items_human_ins, reviews)`` for ``n_products`` products.

    Product types cycle in a fixed order, then the list is shuffled (the original's file is shuffled
    too); the same ``(n_products, seed)`` always gives the same documents.
    """
    rng = random.Random(seed)
    taken: set[str] = set()
    items, attributes, human, reviews = [], {}, {}, []
    for i in range(n_products):
        kind = _TYPES[i % len(_TYPES)]
        item, attrs = _product(rng, _asin(rng, taken), kind)
        items.append(item)
        asin = item["asin"]
        synthetic = f"{rng.choice(_LEADS)} {' and '.join(attrs[:2])} {kind[1]}"
        attributes[asin] = {"attributes": attrs, "instruction": synthetic, "instruction_attributes": attrs[:2]}
        if instructions:
            human[asin] = [_instruction(rng, item, attrs) for _ in range(INSTRUCTIONS_PER_PRODUCT)]
        if rng.random() < 0.4:
            stars = [rng.randint(1, 5) for _ in range(rng.randint(1, 3))]
            reviews.append({
                "asin": asin, "average_rating": round(sum(stars) / len(stars), 1),
                "reviews": [{"title": rng.choice(_REVIEW_TITLES), "stars": s, "review": rng.choice(_REVIEW_BODIES)}
                            for s in stars],
            })  # fmt: skip
    rng.shuffle(items)
    return items, attributes, human, reviews


def write_catalog(dest: str | Path, n_products: int = DEFAULT_PRODUCTS, seed: int = DEFAULT_SEED) -> Path:
    """Write the built-in catalog under the original file names (plus a marker file) and return ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    items, attributes, human, reviews = raw_catalog(n_products, seed)
    for name, doc in (("items_shuffle_1000.json", items), ("items_ins_v2_1000.json", attributes),
                      ("items_human_ins.json", human), ("reviews.json", reviews)):  # fmt: skip
        (dest / name).write_text(json.dumps(doc), encoding="utf-8")
    (dest / MARKER_FILE).write_text(
        f"Generated by agentrl (n_products={n_products}, seed={seed}). This is NOT the WebShop benchmark; "
        "results on it are not comparable with published numbers.\n",
        encoding="utf-8",
    )
    return dest
