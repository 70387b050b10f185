"""WebShop: the original's loader, pages, actions, search and reward, on files in the original format.

Expected values come from the original code's behaviour (``web_agent_site``), hand computation
(BM25, the reward formula) or the original's own test cases (``normalize_color``).
"""

from __future__ import annotations

import functools
import http.server
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import threading

import pytest

pytest.importorskip("rapidfuzz")
pytest.importorskip("bm25s")
pytest.importorskip("Stemmer")

import agentrl  # noqa: E402
from agentrl.cli.common import UserError  # noqa: E402
from agentrl.environments.webshop import builtin, catalog, data, pages, reward, search  # noqa: E402
from agentrl.environments.webshop.env import WebShopEnv, search_keywords  # noqa: E402
from agentrl.environments.webshop.search import SearchEngine  # noqa: E402

H = reward.HEURISTIC_SCORER
INSTR_1 = "i need natural looking hair extensions in jet black, 18 inch"


def _item(asin, name, query, pricing, options, *, desc="", bullets=("",), category="beauty", pc="A › B › C"):
    return {"asin": asin, "name": name, "query": query, "category": category, "product_category": pc,
            "full_description": desc, "small_description": list(bullets), "pricing": pricing,
            "customization_options": options, "images": ["http://img.invalid/x.jpg"], "brand": "x"}  # fmt: skip


def tiny_raw():
    items = [
        _item("B000000001", "Natural Looking Clip In Hair Extension, Long Lasting", " Hair Extensions ", "$25.99",
              {"Color": [{"value": "Jet Black", "image": "a"}, {"value": "Light Brown/Blonde"}],
               "Size": [{"value": "18 Inch"}]},
              desc="Soft human hair.", bullets=["Clip in design", "Heat resistant"],
              pc="Beauty & Personal Care › Hair Care › Hair Extensions"),
        _item("B000000002", "Cotton Crew Socks for Men", "men's socks", "$10.00 - $20.00", None, category="fashion"),
        _item("B000000003", "Stainless Steel Water Bottle", "water bottle", "", {"color": None}),
        _item("nan", "dropped: asin nan", "x", "$1", None),
        _item("B0000000011", "dropped: asin longer than 10", "x", "$1", None),
        _item("B000000001", "dropped: repeated asin", "x", "$1", None),
    ]  # fmt: skip
    items[1]["small_description"] = "Soft cotton socks"  # a string, not a list
    attributes = {
        "B000000001": {"attributes": ["natural looking", "long lasting"], "instruction": "i want hair extensions",
                       "instruction_attributes": ["natural looking"]},
        "B000000002": {"attributes": ["machine wash"], "instruction": "i want socks", "instruction_attributes": ["machine wash"]},
    }  # fmt: skip
    human = {
        "B000000001": [
            {"instruction": INSTR_1 + ".", "instruction_attributes": ["natural looking"],
             "instruction_options": ["jet black", "18 inch"]},
            {"instruction": "no attributes: skipped", "instruction_attributes": [], "instruction_options": []},
        ],
        "B000000002": [{"instruction": "i want machine wash socks", "instruction_attributes": ["machine wash"],
                        "instruction_options": []}],
    }  # fmt: skip
    reviews = [{"asin": "B000000001", "average_rating": 4.5,
                "reviews": [{"title": "Great", "stars": 5, "review": "Looks real."}, {"title": "Ok", "score": 4}]}]
    return items, attributes, human, reviews


@pytest.fixture
def tiny_dir(tmp_path):
    items, attributes, human, reviews = tiny_raw()
    for name, doc in (("items_shuffle_1000.json", items), ("items_ins_v2_1000.json", attributes),
                      ("items_human_ins.json", human), ("reviews.json", reviews)):  # fmt: skip
        (tmp_path / name).write_text(json.dumps(doc))
    return tmp_path


@pytest.fixture
def tiny_env(tiny_dir):
    env = WebShopEnv(data_dir=str(tiny_dir), split="test", noun_scorer="heuristic")
    yield env
    env.close()


# -- loading ---------------------------------------------------------------------------------------


def test_load_products_derives_fields_like_the_original():
    items, attributes, human, reviews = tiny_raw()
    products, malformed = catalog.load_products(items, attributes, human, reviews)
    assert malformed == 0
    assert [p["asin"] for p in products] == ["B000000001", "B000000002", "B000000003"]  # nan, >10 chars, repeat dropped
    p1, p2, p3 = products
    assert (p1["Title"], p1["Description"], p1["query"]) == (items[0]["name"], "Soft human hair.", "hair extensions")
    assert (p1["pricing"], p1["Price"]) == ([25.99], "$25.99")
    assert (p2["pricing"], p2["Price"]) == ([10.0, 20.0], "$10.0 to $20.0")
    assert (p3["pricing"], p3["Price"]) == ([100.0], "$100.0")
    assert p1["options"] == {"color": ["jet black", "light brown | blonde"], "size": ["18 inch"]}
    assert p2["options"] == {} and p3["options"] == {}  # None, and a None option list, give no options
    assert p2["BulletPoints"] == ["Soft cotton socks"]
    assert p1["Attributes"] == ["natural looking", "long lasting"] and p3["Attributes"] == ["DUMMY_ATTR"]
    assert p1["Rating"] == 4.5 and p2["Rating"] == "N.A."
    assert [(r["title"], r["score"], r["body"]) for r in p1["Reviews"]] == [("Great", 5, "Looks real."), ("Ok", 4, "")]
    assert "brand" not in p1 and len(p1["instructions"]) == 2


def test_malformed_products_are_skipped_with_a_count():
    items, attributes, human, reviews = tiny_raw()
    bad = [dict(items[0], asin="B00000000A", pricing="$"), dict(items[0], asin="B00000000B"),
           dict(items[0], asin="B00000000C", customization_options=["not", "a", "dict"]), {"no": "asin"}, 42]  # fmt: skip
    del bad[1]["name"]
    with pytest.warns(UserWarning, match="skipped 5 malformed product"):
        cat = catalog.build_catalog(items + bad, attributes, human, reviews, name="t", is_benchmark=True)
    assert cat.skipped_products == 5 and len(cat.products) == 3 and cat.skipped_goals == 1


def test_prices_goals_and_order_follow_the_original_rng_sequence():
    items, attributes, human, reviews = tiny_raw()
    cat = catalog.build_catalog(items, attributes, human, reviews, name="t", is_benchmark=True, price_seed=7)
    # The original's sequence on the global RNG: uniform() per price range, sample() per goal, then seed(233).
    state = random.getstate()
    try:
        random.seed(7)
        price_2 = random.uniform(10.0, 20.0)
        upper_1 = sorted(random.sample([30.0, 40.0, 50.0, 60.0], 2))[1]
        upper_2 = sorted(random.sample([p for p in catalog.PRICE_RANGE if p > price_2][:4], 2))[1]
        expected = [(INSTR_1 + f", and price lower than {upper_1:.2f} dollars", upper_1),
                    (f"i want machine wash socks, and price lower than {upper_2:.2f} dollars", upper_2)]  # fmt: skip
        random.seed(233)
        random.shuffle(expected)
    finally:
        random.setstate(state)
    assert cat.prices == {"B000000001": 25.99, "B000000002": price_2, "B000000003": 100.0}
    assert [(g["instruction_text"], g["price_upper"]) for g in cat.goals] == expected


def test_synthetic_goals_enumerate_option_combinations():
    items, attributes, human, reviews = tiny_raw()
    cat = catalog.build_catalog(items, attributes, None, None, name="t", is_benchmark=True, human_goals=False)
    texts = sorted(g["instruction_text"].split(", and price")[0] for g in cat.goals)
    assert texts == ["i want hair extensions with color: jet black, and size: 18 inch",
                     "i want hair extensions with color: light brown | blonde, and size: 18 inch",
                     "i want socks"]  # fmt: skip
    assert all(g["goal_options"] in ({}, {"color": "jet black", "size": "18 inch"},
                                     {"color": "light brown | blonde", "size": "18 inch"}) for g in cat.goals)  # fmt: skip


def test_split_convention_and_its_scaled_version():
    items, attributes, human, reviews = builtin.raw_catalog(800, seed=3)
    real = catalog.build_catalog(items, attributes, human, reviews, name="r", is_benchmark=True)
    assert len(real.goals) == 1600
    assert (real.split_range("test"), real.split_range("eval"), real.split_range("train")) == (
        range(0, 500), range(500, 1500), range(1500, 1600))  # fmt: skip
    # 1,200 goals: round(1200 * 500 / 12087) = 50 and round(1200 * 1500 / 12087) = 149
    assert catalog.scaled_split_bounds(1200) == (50, 149)
    env = agentrl.make("webshop")
    assert env.task_ids("test") == [str(i) for i in range(50)]
    assert env.task_ids("valid") == [str(i) for i in range(50, 149)]
    assert env.task_ids("train")[0] == "149" and len(env.task_ids("train")) == 1051
    assert WebShopEnv(split="eval").split == "valid"


def test_missing_catalog_names_the_directory_and_the_fetch_command(tmp_path):
    with pytest.raises(catalog.MissingCatalogError) as err:
        WebShopEnv(data_dir=str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(err.value) and "agentrl data fetch webshop" in str(err.value)


def test_broken_catalog_files_are_one_line_errors(tiny_dir):
    (tiny_dir / "items_ins_v2_1000.json").write_text('{"truncated": ')
    with pytest.raises(ValueError, match="items_ins_v2_1000.json is not valid JSON"):
        catalog.load_catalog(tiny_dir)
    (tiny_dir / "items_ins_v2_1000.json").write_text("[]")
    with pytest.raises(ValueError, match="must hold a JSON object, got list"):
        catalog.load_catalog(tiny_dir)


def test_data_dir_from_environment_variable(tmp_path, monkeypatch):
    builtin.write_catalog(tmp_path, n_products=60, seed=1)
    monkeypatch.setenv(catalog.ENV_VAR, str(tmp_path))
    env = WebShopEnv(split="test")
    _, info = env.reset(options={"task": "0"})
    assert info["catalog"] == str(tmp_path) and info["benchmark"] is False  # the marker file says so
    assert len(env.catalog.products) == 60


# -- pages and actions -------------------------------------------------------------------------------


def test_pages_actions_and_purchase_on_the_tiny_catalog(tiny_env):
    env = tiny_env
    task = next(t for t in env.task_ids("test") if env.catalog.goals[int(t)]["asin"] == "B000000001")
    goal = env.catalog.goals[int(task)]
    instr = goal["instruction_text"]
    obs, info = env.reset(options={"task": task})
    assert obs == f"WebShop [SEP] Instruction: [SEP] {instr} [SEP] Search"
    assert info["instruction"] == instr and info["admissible_actions"] == ["search[<keywords>]"]
    head = f"Instruction: [SEP] {instr} [SEP] Back to Search"
    obs, r, done, _, info = env.step("search[Hair Extension]")
    assert obs == (f"{head} [SEP] Page 1 (Total results: 1) [SEP] Next > [SEP] B000000001 [SEP] "
                   "Natural Looking Clip In Hair Extension, Long Lasting [SEP] $25.99")  # fmt: skip
    assert info["admissible_actions"] == ["search[<keywords>]", "click[back to search]", "click[next >]",
                                          "click[b000000001]"]  # fmt: skip
    obs, *_ = env.step("click[next >]")
    assert obs == f"{head} [SEP] Page 2 (Total results: 1) [SEP] < Prev [SEP] Next >"
    env.step("click[< prev]")
    obs, *_, info = env.step("click[b000000001]")
    item = (f"{head} [SEP] < Prev [SEP] color [SEP] jet black [SEP] light brown | blonde [SEP] size [SEP] 18 inch [SEP] "
            "Natural Looking Clip In Hair Extension, Long Lasting [SEP] Price: $25.99 [SEP] Rating: 4.5 [SEP] "
            "Description [SEP] Features [SEP] Reviews [SEP] Buy Now")  # fmt: skip
    assert obs == item and info["asin"] == "B000000001"
    assert env.step("click[description]")[0] == f"{head} [SEP] < Prev [SEP] Soft human hair."
    assert env.step("click[< prev]")[0] == item
    assert env.step("click[features]")[0] == f"{head} [SEP] < Prev [SEP] Clip in design [SEP] Heat resistant"
    env.step("click[< prev]")
    assert env.step("click[reviews]")[0] == f'{head} [SEP] < Prev [SEP] "Great" [SEP] 5 [SEP] Looks real. [SEP] "Ok" [SEP] 4'
    env.step("click[< prev]")
    env.step("click[jet black]")
    obs, r, done, _, info = env.step("click[18 inch]")
    assert obs == item and info["options"] == {"color": "jet black", "size": "18 inch"}
    obs, r, done, trunc, info = env.step("click[buy now]")
    # all matched: query match -> r_type 1; 1 attribute + 2 options + price (25.99 < bound) over 1 + 2 + 1
    assert (r, done, trunc, info["won"], info["progress"]) == (1.0, True, False, True, 1.0)
    assert obs == "Thank you for shopping with us! [SEP] Your score (min 0.0, max 1.0) [SEP] 1.0"
    assert info["purchased_asin"] == "B000000001" and info["reward_info"]["noun_scorer"] == H
    with pytest.raises(agentrl.EpisodeOver):
        env.step("click[buy now]")


def test_buying_without_the_options_scores_half(tiny_env):
    env = tiny_env
    task = next(t for t in env.task_ids("test") if env.catalog.goals[int(t)]["asin"] == "B000000001")
    env.reset(options={"task": task})
    env.step("search[clip in hair]")
    env.step("click[b000000001]")
    _, r, done, _, info = env.step("click[buy now]")
    assert (r, done, info["won"], info["options"]) == (0.5, True, False, {})  # (1 + 0 + 1) / 4


def test_back_to_search_and_prev_from_item_reset_the_choices(tiny_env):
    env = tiny_env
    env.reset(options={"task": "0"})
    env.step("search[hair extension]")
    env.step("click[b000000001]")
    env.step("click[jet black]")
    obs, *_, info = env.step("click[< prev]")
    assert info["page"] == "results" and info["options"] == {} and info["asin"] is None
    obs, *_, info = env.step("click[back to search]")
    assert info["page"] == "search" and obs.startswith("WebShop [SEP] Instruction:")


@pytest.mark.parametrize(
    "action, reason",
    [("click[", "search[keywords] or click[element]"), ("search[]", "search[keywords] or click[element]"),
     ("search[ ]", "search needs keywords"), ("click[buy now]", "not a clickable element"),
     ("click[search]", "not a clickable element"), ("Click[search]", "unknown action 'Click'"),
     ("buy[it]", "unknown action 'buy'"), ("search[" + "x" * 1_000_000 + "]", "longer than 1000 characters"),
     ("", "empty action")],
)  # fmt: skip
def test_malformed_actions_are_no_ops_with_a_message(tiny_env, action, reason):
    first, _ = tiny_env.reset(options={"task": "0"})
    obs, r, done, trunc, info = tiny_env.step(action)
    assert reason in obs.splitlines()[0] and obs.splitlines()[1] == first
    assert (r, done, trunc, info["invalid_action"], info["page"]) == (0.0, False, False, True, "search")


def _product(**fields):
    base = {"asin": "B000000009", "Title": "Mug", "Price": "$5.0", "Rating": "N.A.", "Description": "Blue mug.",
            "BulletPoints": ["Ceramic"], "options": {}, "Reviews": []}  # fmt: skip
    return {**base, **fields}


HEAD = "Instruction: [SEP] buy a mug [SEP] Back to Search [SEP] < Prev"


@pytest.mark.parametrize(
    "which, fields, expected",
    [
        # <li><p class="product-info"> {{bulletpoint}}</p></li>: an empty bullet is the text node " ", which
        # BeautifulSoup keeps as " " (ASCII whitespace without a newline) and .strip() makes an empty segment
        ("Features", {"BulletPoints": ["Ceramic", "", "Dishwasher safe"]}, " [SEP] Ceramic [SEP]  [SEP] Dishwasher safe"),
        ("Features", {"BulletPoints": [""]}, " [SEP] "),
        # a bullet holding a newline collapses to "\n", which the text mode filters out (t != '\n')
        ("Features", {"BulletPoints": ["Ceramic", "\n"]}, " [SEP] Ceramic"),
        # <p class="product-info">{{Description}}</p>: a blank description is a " " node -> an empty segment,
        # an empty one is no text node at all -> no segment
        ("Description", {"Description": "  "}, " [SEP] "),
        ("Description", {"Description": ""}, ""),
        ("Description", {"Description": "\xa0"}, " [SEP] "),  # not ASCII whitespace: kept, then stripped
        ("Reviews", {"Reviews": [{"title": "", "score": 5, "body": " "}]}, ' [SEP] "" [SEP] 5 [SEP] '),
    ],
)  # fmt: skip
def test_blank_texts_show_as_the_original_text_mode_shows_them(which, fields, expected):
    # The original's WebAgentTextEnv.convert_html_to_text(simple=True): ' [SEP] '.join(t.strip() for t in
    # visible text nodes if t != '\n'), on its Jinja templates parsed by BeautifulSoup 4.11 (html.parser).
    page = pages.sub_page("buy a mug", _product(**fields), which)
    assert page.text == HEAD + expected


def test_blank_titles_and_options_show_as_empty_segments():
    product = _product(Title=" ", options={"size": ["small", " "]})
    item = pages.item_page("buy a mug", product).text
    assert item == (f"{HEAD} [SEP] size [SEP] small [SEP]  [SEP]  [SEP] Price: $5.0 [SEP] Rating: N.A. [SEP] "
                    "Description [SEP] Features [SEP] Reviews [SEP] Buy Now")  # fmt: skip
    results = pages.results_page("buy a mug", [product], 1, 1).text
    assert results.endswith("Next > [SEP] B000000009 [SEP]  [SEP] $5.0")


def test_an_empty_bullet_point_on_the_features_page_of_the_env(tiny_env):
    instr = tiny_env.reset(options={"task": "0"})[1]["instruction"]
    tiny_env.step("search[water bottle]")
    tiny_env.step("click[b000000003]")  # its small_description is [""]
    obs, *_ = tiny_env.step("click[features]")
    assert obs == f"Instruction: [SEP] {instr} [SEP] Back to Search [SEP] < Prev [SEP] "


def test_search_works_from_any_page_and_misses_give_an_empty_page(tiny_env):
    instr = tiny_env.reset(options={"task": "0"})[1]["instruction"]
    tiny_env.step("search[socks]")
    tiny_env.step("click[b000000002]")
    obs, *_, info = tiny_env.step("search[the of and]")  # only stop words: no query terms, no hits
    assert obs == f"Instruction: [SEP] {instr} [SEP] Back to Search [SEP] Page 1 (Total results: 0) [SEP] Next >"
    assert info["page"] == "results" and info["invalid_action"] is False


# -- search ----------------------------------------------------------------------------------------------


def _doc(asin, title):
    return {"asin": asin, "Title": title, "Description": "", "BulletPoints": [""], "options": {}}


def test_bm25_scores_match_the_lucene_formula_by_hand():
    engine = SearchEngine([_doc("d0", "red running shoes"), _doc("d1", "blue running shorts"), _doc("d2", "red wine glass")])
    # N = 3, every document has 3 terms (avgdl 3): tf part = 1 / (1 + k1 (1 - b + b)) = 1 / 1.9
    idf_red, idf_shoe = math.log(1 + 1.5 / 2.5), math.log(1 + 2.5 / 1.5)
    scores = engine.scores("Red shoe")  # stemming: shoe = shoes; case folded
    assert scores == pytest.approx([(idf_red + idf_shoe) / 1.9, 0.0, idf_red / 1.9], rel=1e-5)
    assert engine.search("red shoe") == ["d0", "d2"]
    assert engine.search("men's shorts") == ["d1"]  # possessive dropped, plural stemmed


@pytest.mark.parametrize(
    "query, terms",
    [("s", ["s"]), ("%s", ["s"]), ("it s a gift", ["s", "gift"]),
     ("women s running shoes", ["women", "s", "run", "shoe"]), ("XS sizes", ["xs", "size"])],
)  # fmt: skip
def test_one_and_two_letter_words_are_not_stemmed_like_lucene(query, terms):
    # Lucene's PorterStemmer.stem only stems words longer than two characters (`if (k > k0+1)`, from
    # Porter's C original); Snowball's porter turns "s" into "" (which crashed bm25s) and "xs" into "x".
    # "it" and "a" are Lucene stop words.
    assert search.Analyzer()(query) == terms


@pytest.mark.parametrize("query", ["s", "%s", "it s a gift", "women s running shoes"])
def test_searches_with_a_lone_s_return_results_instead_of_raising(query):
    # Issue 16: bm25s raised "maximum token ID in the query ... is higher than the number of tokens".
    env = agentrl.make("webshop")
    env.reset(options={"task": "0"})
    obs, r, done, trunc, info = env.step(f"search[{query}]")
    assert (r, done, trunc, info["page"], info["invalid_action"]) == (0.0, False, False, "results", False)
    assert "Total results:" in obs


def test_a_size_s_document_is_found_by_the_term_s():
    engine = SearchEngine([_doc("d0", "t-shirt size S"), _doc("d1", "gift box"), _doc("d2", "gift card")])
    # N = 3; "s" is in d0 only: idf = ln(1 + (3 - 1 + 0.5) / (1 + 0.5)); d0 has 4 terms (t, shirt, size, s),
    # avgdl = (4 + 2 + 2) / 3; tf part = 1 / (1 + k1 (1 - b + b dl / avgdl)); "gift" ties d1 and d2 below
    idf_s = math.log(1 + 2.5 / 1.5)
    avgdl = 8 / 3
    assert engine.analyzer("t-shirt size S") == ["t", "shirt", "size", "s"]
    expected = idf_s * 1 / (1 + search.K1 * (1 - search.B + search.B * 4 / avgdl))
    assert engine.scores("it s a gift")[0] == pytest.approx(expected, rel=1e-5)
    assert engine.search("it s a gift") == ["d0", "d1", "d2"]


def test_search_returns_the_top_50_with_ties_in_index_order():
    engine = SearchEngine([_doc(f"a{i:03d}", "same words here") for i in range(60)] + [_doc("best", "words words")])
    hits = engine.search("words")
    assert len(hits) == 50 and hits[0] == "best" and hits[1:] == [f"a{i:03d}" for i in range(49)]


# -- reward -------------------------------------------------------------------------------------------------

PRODUCT = {"query": "hair extensions", "product_category": "Beauty & Personal Care › Hair Care › Hair Extensions",
           "name": "Clip In Hair Extension", "Title": "Clip In Hair Extension",
           "Attributes": ["natural looking", "heat resistant"], "BulletPoints": ["Made of human hair"],
           "Description": "Long lasting and soft."}  # fmt: skip
GOAL = {"query": "hair extensions", "product_category": PRODUCT["product_category"], "name": "Clip In Hair Extension",
        "attributes": ["natural looking", "long lasting"], "goal_options": ["jet black", "18 inch"], "price_upper": 40.0}  # fmt: skip
OTHER = {"query": "water bottle", "product_category": "Sports & Outdoors › Accessories › Water Bottles",
         "name": "Hair Dryer", "Title": "Hair Dryer", "Attributes": [], "BulletPoints": [""], "Description": ""}  # fmt: skip


def _reward(product=PRODUCT, goal=GOAL, price=30.0, options=None):
    options = {"color": "jet black", "size": "18 inch"} if options is None else options
    return reward.get_reward(product, goal, price, options, scorer=H)


def test_reward_all_matched_is_one():
    r, parts = _reward()  # 2 attributes (one fuzzy, one in the description) + 2 options + price over 5
    assert r == 1.0 and (parts["r_type"], parts["r_att"], parts["r_option"], parts["r_price"]) == (1.0, 1.0, 1.0, True)


def test_reward_wrong_colour_option():
    r, parts = _reward(options={"color": "ash blonde", "size": "18 inch"})  # 'ash' vs 'black' after normalisation
    assert r == pytest.approx(4 / 5) and parts["r_option"] == 0.5


def test_reward_over_budget():
    r, parts = _reward(price=45.0)
    assert r == pytest.approx(4 / 5) and parts["r_price"] is False


def test_reward_wrong_category_and_title():
    assert _reward(product=dict(OTHER, name="Stainless Steel Water Bottle"))[0] == 0.0  # no shared noun: r_type 0
    # query and category differ; 1 of 5 goal nouns shared: title score 0.2 is not > 0.2 -> r_type 0.5
    goal5 = dict(GOAL, name="Hair Extension Clip Set for Women")
    r, parts = _reward(product=OTHER, goal=goal5)
    assert (parts["title_score"], parts["r_type"]) == (0.2, 0.5)
    assert r == pytest.approx(0.5 * (0 + 2 + 1) / 5)  # no attribute; both chosen options and the price match
    goal11 = dict(GOAL, name="Hair Clip Extension Set Kit Comb Brush Wig Cap Net Pin")  # 1 of 11 nouns: r_type 0.1
    assert _reward(product=OTHER, goal=goal11)[1]["r_type"] == 0.1
    # a query match does not survive a zero noun overlap (the original overrides it)
    r, parts = _reward(product=dict(PRODUCT, name="Stainless Steel Water Bottle"))
    assert (parts["query_match"], parts["r_type"], r) == (True, 0.0, 0.0)


def test_reward_without_attributes():
    r, parts = _reward(goal=dict(GOAL, attributes=[], goal_options=["jet black"]), options={"color": "jet black"})
    assert r == 1.0 and parts["w_att"] == 0.0  # (0 + 1 + 1) / (0 + 1 + 1)
    dummy = dict(PRODUCT, Attributes=["DUMMY_ATTR"], Title="Natural Looking Clip In Hair Extension")
    r, parts = _reward(product=dummy)  # found in the title, then in the description
    assert parts["r_att"] == 1.0 and r == 1.0


def test_synthetic_goal_options_compare_as_name_value_pairs_like_the_original():
    goal = dict(GOAL, attributes=["natural looking"], goal_options={"color": "black", "size": "large"})
    r, parts = _reward(goal=goal, options={"color": "black", "size": "large"})
    assert parts["r_option"] == 1.0 and r == 1.0  # ('color', 'black') -> 'black'; "('size', 'large')" ~ 'large'


def test_fuzzy_ratio_and_colour_normalisation_reference_values():
    assert reward.token_set_ratio("black", "blue") == 44  # Indel: 2 * 2 / (5 + 4) = 0.444
    assert reward.token_set_ratio("Natural-Looking!", "looking natural hair") == 100  # subset after processing
    assert reward.token_set_ratio("", "anything") == 0 and reward.token_set_ratio("ß", "ss") == 0  # U+00DF deleted
    # the original's tests/web-agent-site/engine/test_normalize.py cases
    cases = [("", ""), ("black forest", "black"), ("violet lavender", "lavender"), ("steelivy fuchsia", "fuchsia"),
             ("123alabaster", "alabaster"), ("webshop", "webshop")]  # fmt: skip
    assert [reward.normalize_color(c) for c, _ in cases] == [e for _, e in cases]


@pytest.mark.parametrize(
    "a, b, processed, expected",
    [
        # U+2019 and U+FF1A are outside U+0080-U+00FF: separators, not deleted (the old port: 77 and 53)
        ("women’s", "women's", ("women s", "women s"), 100),
        ("size：large", "size large", ("size large", "size large"), 100),
        # en and em dashes are separators too: {small, large} on both sides (the old port: 100 by luck)
        ("small – large", "small—large", ("small   large", "small large"), 100),
        # U+00E9 is in U+0080-U+00FF: deleted, so "café" is "caf"; equal token sets -> 100
        ("Café Noir", "caf noir", ("caf noir", "caf noir"), 100),
        # "_" is a word character for thefuzz 0.19's (?ui)\W: tokens {a_b} vs {a, b}, no intersection,
        # Indel ratio of "a_b" and "a b" = 2 * 2 / (3 + 3) -> 67 (the old port: 100)
        ("a_b", "a b", ("a_b", "a b"), 67),
        # 'women’s dress' vs 'womens dress': {women, s, dress} vs {womens, dress}; sect "dress";
        # "dress s women" vs "dress womens": Indel 2 * 11 / (13 + 12) = 0.88 -> 88
        ("women’s dress", "womens dress", ("women s dress", "womens dress"), 88),
    ],
)  # fmt: skip
def test_token_set_ratio_processes_text_like_thefuzz(a, b, processed, expected):
    # The original (web_agent_site/engine/goal.py) calls thefuzz 0.19.0's fuzz.token_set_ratio (its pin in
    # requirements.txt), whose full_process deletes only chr(128)..chr(255) ("ascii dammit!"), replaces
    # each (?ui)\W character with a space, lower-cases and strips. The old port deleted every non-ASCII
    # character. The expected values are thefuzz 0.19.0's (with and without python-Levenshtein).
    assert (reward.full_process(a), reward.full_process(b)) == processed
    assert reward.token_set_ratio(a, b) == reward.token_set_ratio(b, a) == expected
    assert reward.token_set_ratio(None, "x") == 0  # thefuzz's check_for_none


def test_a_non_ascii_separator_no_longer_flips_an_option_match():
    # goal option "size：large" vs chosen "size large": 100 > 85 now (53 before: no match, lower reward)
    assert reward.get_option_reward(["size large"], ["size：large"]) == (1.0, 1)
    goal = dict(GOAL, attributes=["natural looking"], goal_options=["women’s"])
    r, parts = _reward(goal=goal, options={"fit": "women's"})
    assert parts["r_option"] == 1.0 and r == 1.0  # (1 attribute + 1 option + price) / 3


def test_heuristic_nouns_and_scorer_choice():
    assert reward.heuristic_nouns("Men's Lightweight Running Shoes, Breathable Mesh, Black") == (
        "men", "running", "shoes", "mesh")  # fmt: skip
    if not reward.spacy_available():
        assert reward.resolve_noun_scorer("auto") == H
        with pytest.raises(ValueError, match="en_core_web_sm"):
            reward.resolve_noun_scorer("spacy")


# -- the env as a whole ----------------------------------------------------------------------------------------


def test_check_env_passes():
    agentrl.check_env(agentrl.make("webshop"))
    agentrl.check_env(agentrl.make("agentrl/WebShop-v1", split="test"))


def test_scripted_shopper_wins_the_valid_panel_of_the_builtin_catalog():
    env = agentrl.make("webshop", split="valid")
    won, turns = 0, []
    for task in env.task_ids():
        obs, info = env.reset(options={"task": task})
        assert info["benchmark"] is False and info["catalog"] == "builtin"
        done = False
        while not done:
            obs, r, term, trunc, info = env.step(env.expert_action())
            done = term or trunc
        won += info["won"]
        turns.append(info["turn"])
    # Buying the goal product with the goal's options under the price bound scores 1.0 by the formula.
    assert won == len(env.task_ids()) == 99 and max(turns) <= 10
    assert search_keywords("a b, and price lower than 30.00 dollars") == "a b"


def test_builtin_catalog_is_deterministic(tmp_path):
    assert builtin.raw_catalog(50, seed=4) == builtin.raw_catalog(50, seed=4)
    assert builtin.raw_catalog(50, seed=4) != builtin.raw_catalog(50, seed=5)
    a, b = agentrl.make("webshop"), agentrl.make("webshop")
    assert [g["instruction_text"] for g in a.catalog.goals] == [g["instruction_text"] for g in b.catalog.goals]
    assert a.reset(seed=3)[0] == b.reset(seed=3)[0]


# -- data fetch / check ------------------------------------------------------------------------------------------


@pytest.fixture
def http_dir(tmp_path):
    served = tmp_path / "served"
    builtin.write_catalog(served, n_products=40, seed=2)
    (served / "page.html").write_text("<html>quota exceeded</html>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_fetch_downloads_from_a_local_server_and_check_reports(http_dir, tmp_path):
    served, base = http_dir
    names = ["items_shuffle_1000.json", "items_ins_v2_1000.json", "items_human_ins.json"]
    dest = data.fetch(tmp_path / "dl", sources={n: f"{base}/{n}" for n in names})
    assert all((dest / n).read_bytes() == (served / n).read_bytes() for n in names)
    report = data.check(dest)
    assert (report["products"], report["goals"], report["benchmark"]) == (40, 80, True)
    assert report["split test"] == "80 goals (0..79)" and report["split train"] == "0 goals (80..80)"


def test_fetch_failure_says_what_to_do(http_dir, tmp_path):
    _, base = http_dir
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(UserError) as err:
        data.fetch(tmp_path / "dl", sources={"items_human_ins.json": f"http://127.0.0.1:{closed}/x.json"})
    assert "could not download items_human_ins.json" in str(err.value) and str(tmp_path / "dl") in err.value.hint
    with pytest.raises(UserError, match="did not return a JSON file"):
        data.fetch(tmp_path / "dl", sources={"items_human_ins.json": f"{base}/page.html"})
    assert not (tmp_path / "dl" / "items_human_ins.json").exists()
    with pytest.raises(UserError, match="agentrl data fetch webshop"):
        data.check(tmp_path / "empty")


def test_cli_data_check_and_eval(tmp_path):
    builtin.write_catalog(tmp_path / "cat", n_products=30, seed=1)
    out = subprocess.run(["agentrl", "data", "check", "webshop", "--root", str(tmp_path / "cat")],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "products: 30" in out.stdout and "benchmark: False" in out.stdout
    out = subprocess.run(["agentrl", "data", "check", "webshop", "--root", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode != 0 and "agentrl data fetch webshop" in out.stderr


def test_play_prints_click_targets_literally():
    # Rich markup read `click[back to search]` as a style tag and printed "click | click | click".
    agentrl_cli = shutil.which("agentrl", path=os.path.dirname(sys.executable)) or "agentrl"
    out = subprocess.run([agentrl_cli, "play", "webshop", "--task", "0"], input="search[women s running shoes]\nclick[next >]\nquit\n",
                         capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "100000"})  # fmt: skip
    assert out.returncode == 0, out.stderr
    actions = [line for line in out.stdout.splitlines() if line.startswith("actions: ")]
    assert actions[0] == "actions: search[<keywords>]"
    assert actions[1].startswith("actions: search[<keywords>] | click[back to search] | click[next >] | click[b")
    assert actions[2].startswith("actions: search[<keywords>] | click[back to search] | click[< prev] | click[next >]")
    assert "Page 2 (Total results: " in out.stdout and "task 0" in out.stdout
