"""WebShop's purchase reward, ported from the original ``web_agent_site/engine/goal.py``.

``reward = r_type * (n_attr + n_opt + price_ok) / (|goal attributes| + |goal options| + 1)``

* ``n_attr``: goal attributes matched by one of the product's ``Attributes`` (fuzzy token-set ratio
  > 85) or contained (as a substring) in its title, bullet points or description;
* ``n_opt``: goal options matched by one of the chosen options (token-set ratio > 85, both sides
  passed through the original's colour normalisation first);
* ``price_ok``: the product's price is at most the goal's ``price_upper``;
* ``r_type`` in {0, 0.1, 0.5, 1}: 1 when the query matches, or >= 2 category levels are shared, or the
  noun overlap of the titles is > 0.2; 0.5 otherwise; then 0.1 when the noun overlap is < 0.1 and 0
  when it is exactly 0 (these last two override a query or category match, as in the original).

The fuzzy ratio is thefuzz's ``token_set_ratio`` with thefuzz's own string processing (see
:func:`full_process`), rounded to an integer; the ratio itself is computed with ``rapidfuzz``. The noun overlap needs a part-of-speech tagger:
the original uses spaCy's ``en_core_web_sm``. When that model is installed it is used here too
(scorer ``"spacy:en_core_web_sm"``); otherwise :func:`heuristic_nouns` approximates it (scorer
``"heuristic-v1"``), and the env reports which one scored each episode in ``info["noun_scorer"]``.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

#: Colours the original's ``normalize_color`` looks for, in its order (the first one contained wins).
COLOR_SET: tuple[str, ...] = (
    "alabaster", "apricot", "aqua", "ash", "asphalt", "azure", "banana", "beige", "black", "blue", "blush",
    "bordeaux", "bronze", "brown", "burgundy", "camel", "camo", "caramel", "champagne", "charcoal", "cheetah",
    "chestnut", "chocolate", "christmas", "coffee", "cognac", "copper", "coral", "cranberry", "cream",
    "crystal", "dark", "denim", "eggplant", "elephant", "espresso", "fuchsia", "gold", "granite", "grape",
    "graphite", "grass", "gray", "green", "grey", "heather", "indigo", "ivory", "ivy", "khaki", "lavender",
    "lemon", "leopard", "light", "lilac", "lime", "magenta", "maroon", "mauve", "merlot", "midnight", "mint",
    "mocha", "multicolor", "mushroom", "mustard", "natural", "navy", "nude", "olive", "orange", "peach",
    "pewter", "pink", "plum", "purple", "rainbow", "red", "rose", "royal", "rust", "sand", "sapphire",
    "seashell", "silver", "skull", "slate", "steel", "stone", "stonewash", "sunflower", "tan", "taupe",
    "teal", "tiger", "turquoise", "violet", "walnut", "wheat", "white", "wine", "yellow",
)  # fmt: skip

FUZZY_THRESHOLD = 85
SPACY_SCORER = "spacy:en_core_web_sm"
HEURISTIC_SCORER = "heuristic-v1"
NOUN_TAGS = ("PNOUN", "NOUN", "PROPN")  # as in the original (PNOUN is not a spaCy tag; kept for fidelity)


def normalize_color(value: Any) -> Any:
    """The first colour of :data:`COLOR_SET` that ``value`` contains, else ``value`` unchanged.

    ``in`` is Python's: a substring test on strings, an element test on tuples (the original passes
    ``(name, value)`` pairs for synthetic goals, and that behaviour is kept).
    """
    for color in COLOR_SET:
        if color in value:
            return color
    return value


#: thefuzz's ``asciidammit`` deletes the Latin-1 supplement U+0080-U+00FF only ("ascii dammit!").
_LATIN1_SUPPLEMENT = dict.fromkeys(range(128, 256))
#: thefuzz 0.19's ``StringProcessor.regex``: every non-word character becomes one space.
_NON_WORD = re.compile(r"(?ui)\W")


def full_process(value: Any) -> str:
    """thefuzz 0.19.0's ``utils.full_process(value, force_ascii=True)``, the original's pinned version.

    Only U+0080-U+00FF are deleted (``é``, ``ß``, the no-break space); every other non-word
    character, ASCII or not (``’ – — ：``), becomes a space, so ``women’s`` and ``women's`` both give
    ``women s``. Then lower case and strip. Non-strings go through ``str`` first, as in thefuzz (the
    original passes ``(name, value)`` tuples for synthetic goals).
    """
    text = str(value).translate(_LATIN1_SUPPLEMENT)
    return _NON_WORD.sub(" ", text).lower().strip()


def token_set_ratio(a: Any, b: Any) -> int:
    """thefuzz's ``fuzz.token_set_ratio`` (0-100, integer): 0 for ``None`` or an empty processed side.

    The token-set construction and the Indel ratio come from rapidfuzz, which computes what thefuzz
    computes with ``python-Levenshtein`` (thefuzz 0.19 with its speedup, and every thefuzz >= 0.20).
    thefuzz 0.19 without ``python-Levenshtein`` falls back to difflib's Ratcliff-Obershelp ratio,
    which can be lower on strings whose common characters are out of order.
    """
    from rapidfuzz import fuzz

    if a is None or b is None:
        return 0
    a, b = full_process(a), full_process(b)
    if not a or not b:
        return 0
    return int(round(fuzz.token_set_ratio(a, b, processor=None)))


# -- noun extraction ---------------------------------------------------------------------------

#: English function words (spaCy's stop list, trimmed to words that are never nouns in a title).
_STOP_WORDS = frozenset(
    """a about above after again against all almost alone along already also although always am among an and
    another any anyhow anyone anything anyway anywhere are around as at be became because become becomes
    been before beforehand behind being below beside besides between beyond both but by can cannot could
    did do does doing done down due during each either else elsewhere enough even ever every everyone
    everything everywhere except few for former formerly from further had has have having he hence her here
    hereby herein hers herself him himself his how however i if in indeed into is it its itself just least
    less many may me meanwhile might mine more moreover most mostly much must my myself neither never
    nevertheless next no nobody none noone nor not nothing now nowhere of off often on once one only onto or
    other others otherwise our ours ourselves out over own per perhaps please quite rather re really same
    several she should since so some somehow someone something sometime sometimes somewhere still such than
    that the their theirs them themselves then thence there thereafter thereby therefore therein these they
    this those though through throughout thru thus to together too toward towards under unless until up upon
    us used using very via was we well were what whatever when whence whenever where whereafter whereas
    whereby wherein whereupon wherever whether which while whither who whoever whole whom whose why will
    with within without would yet you your yours yourself yourselves s t d ll m ve""".split()
)

#: Adjectives, participles and verbs that product titles use often and spaCy does not tag as nouns.
_NON_NOUNS = frozenset(
    """new best big small large little long short tall high low wide narrow thin thick light heavy soft hard
    strong super ultra extra mini premium professional pro original natural organic pure fresh raw
    free compatible adjustable portable durable washable reusable waterproof breathable comfortable
    lightweight wireless rechargeable foldable stainless non anti easy quick fast slow hot cold warm cool
    dry wet clean fine great good nice cute pretty beautiful elegant classic modern vintage casual formal
    sexy slim loose fit fitted full half double single multi dual triple real genuine fake faux plus
    sturdy solid clear dark bright deep pale matte glossy shiny sparkly metallic golden wooden
    round square flat curved straight curly wavy handmade made designed perfect ideal suitable safe healthy
    delicious sweet salty spicy sour bitter crispy crunchy creamy rich smooth red blue green black white
    yellow orange purple pink brown grey gray beige navy silver gold ivory tan teal coral maroon khaki
    mens womens unisex adult lasting looking fitting""".split()
)
_NON_NOUN_SUFFIXES = ("ly", "able", "ible", "ful", "less", "ous", "ive", "ish")
_WORD = re.compile(r"[a-z]+")


@lru_cache(maxsize=65536)
def heuristic_nouns(text: str) -> tuple[str, ...]:
    """Approximate spaCy's nouns of a product title without a tagger (scorer ``heuristic-v1``).

    A token (a run of ASCII letters, lower-cased) counts as a noun unless it is an English function
    word, one of a closed list of adjectives/participles common in product titles (colours and
    audience words included), or ends in an adjective/adverb suffix (-ly, -able, -ible, -ful, -less,
    -ous, -ive, -ish). Duplicates are kept, as in the original, since ``len`` of the goal's list is
    the denominator of the title score.
    """
    out = []
    for token in _WORD.findall(text.lower()):
        if len(token) < 2 or token in _STOP_WORDS or token in _NON_NOUNS:
            continue
        if len(token) > 4 and token.endswith(_NON_NOUN_SUFFIXES):
            continue
        out.append(token)
    return tuple(out)


def spacy_available() -> bool:
    """Whether spaCy and its ``en_core_web_sm`` model are installed (the original's tagger)."""
    return importlib.util.find_spec("spacy") is not None and importlib.util.find_spec("en_core_web_sm") is not None


@lru_cache(maxsize=1)
def _spacy_nlp():
    import spacy

    return spacy.load("en_core_web_sm")


@lru_cache(maxsize=65536)
def spacy_nouns(text: str) -> tuple[str, ...]:
    """The original's noun extraction: tokens tagged NOUN/PROPN by ``en_core_web_sm``, lower-cased."""
    return tuple(t.text.lower() for t in _spacy_nlp()(text) if t.pos_ in NOUN_TAGS)


def resolve_noun_scorer(choice: str = "auto") -> str:
    """``"auto"`` -> spaCy when ``en_core_web_sm`` is installed, else the heuristic; or force one."""
    if choice == "auto":
        return SPACY_SCORER if spacy_available() else HEURISTIC_SCORER
    if choice in ("spacy", SPACY_SCORER):
        if not spacy_available():
            raise ValueError(
                "noun_scorer='spacy' needs spaCy and its en_core_web_sm model "
                "(pip install spacy && python -m spacy download en_core_web_sm)"
            )
        return SPACY_SCORER
    if choice in ("heuristic", HEURISTIC_SCORER):
        return HEURISTIC_SCORER
    raise ValueError(f"unknown noun_scorer {choice!r}; choose auto, spacy or heuristic")


def nouns(text: str, scorer: str) -> tuple[str, ...]:
    return spacy_nouns(text) if scorer == SPACY_SCORER else heuristic_nouns(text)


# -- the reward ------------------------------------------------------------------------------


def get_type_reward(product: Mapping[str, Any], goal: Mapping[str, Any], scorer: str) -> dict[str, Any]:
    """``r_type`` from query match, shared category levels and the noun overlap of the names."""
    query_match = product["query"] == goal["query"]
    product_levels = {x.strip() for x in product["product_category"].split("›")}
    goal_levels = {x.strip() for x in goal["product_category"].split("›")}
    category_match = len(product_levels & goal_levels) >= 2
    purchased = nouns(product["name"], scorer)
    desired = nouns(goal["name"], scorer)
    title_score = 0.2 if not desired else len(set(purchased) & set(desired)) / len(desired)
    r_type = 1.0
    if not (query_match or category_match or title_score > 0.2):
        r_type = 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return {"r_type": r_type, "query_match": query_match, "category_match": category_match, "title_score": title_score}


def get_attribute_reward(product: Mapping[str, Any], goal: Mapping[str, Any]) -> tuple[float, int]:
    """``(r_attr, n_attr)``: goal attributes found in the product's attributes or text."""
    goal_attrs = goal["attributes"]
    title = product["Title"].lower()
    bullets = " ".join(product["BulletPoints"]).lower()
    description = product["Description"].lower()
    matches = 0
    for g_attr in goal_attrs:
        if any(token_set_ratio(p_attr, g_attr) > FUZZY_THRESHOLD for p_attr in product["Attributes"]):
            matches += 1
        elif g_attr in title or g_attr in bullets or g_attr in description:
            matches += 1
    return (matches / len(goal_attrs) if goal_attrs else 0.0), matches


def get_option_reward(purchased_options: Iterable[Any], goal_options: Iterable[Any]) -> tuple[float | None, int]:
    """``(r_option, n_opt)``: goal options matched by some chosen option, after colour normalisation."""
    purchased = [normalize_color(o) for o in purchased_options]
    goal = [normalize_color(o) for o in goal_options]
    matches = 0
    for g_option in goal:
        if any(token_set_ratio(p_option, g_option) > FUZZY_THRESHOLD for p_option in purchased):
            matches += 1
    return (matches / len(goal) if goal else None), matches


def goal_option_items(goal: Mapping[str, Any]) -> list[Any]:
    """Goal options as the original compares them: a list's values, or a dict's ``(name, value)`` pairs."""
    options = goal["goal_options"]
    return list(options.items()) if isinstance(options, Mapping) else list(options)


def get_reward(
    product: Mapping[str, Any],
    goal: Mapping[str, Any],
    price: float,
    options: Mapping[str, str],
    *,
    scorer: str = HEURISTIC_SCORER,
) -> tuple[float, dict[str, Any]]:
    """The reward of buying ``product`` at ``price`` with chosen ``options`` for ``goal``, and its parts."""
    type_info = get_type_reward(product, goal, scorer)
    price_ok = bool(price <= goal["price_upper"])
    r_attr, n_attr = get_attribute_reward(product, goal)
    r_option, n_opt = get_option_reward(list(options.values()), goal_option_items(goal))
    n_goal_opts = len(goal["goal_options"])
    denominator = len(goal["attributes"]) + n_goal_opts + 1
    reward = (n_attr + n_opt + int(price_ok)) / denominator * type_info["r_type"]
    parts: dict[str, Any] = {
        **type_info,
        "r_att": r_attr,
        "w_att": len(goal["attributes"]) / denominator,
        "r_price": price_ok,
        "w_price": 1 / denominator,
        "noun_scorer": scorer,
    }
    if r_option is not None:
        parts["r_option"] = r_option
        parts["w_option"] = n_goal_opts / denominator
    return float(reward), parts


def describe_options(options: Sequence[Any] | Mapping[str, Any]) -> list[str]:
    """Goal options as plain strings (for display and the scripted shopper)."""
    if isinstance(options, Mapping):
        return [str(v) for v in options.values()]
    return [str(v) for v in options]
