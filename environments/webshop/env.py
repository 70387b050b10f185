"""``agentrl/WebShop-v1``: WebShop's text environment (Yao et al., NeurIPS 2022) in plain Python.

The agent shops for a product described by an instruction. Actions are ``search[keywords]`` (from
any page) and ``click[text]``, where ``text`` (lower-cased) must be a clickable element of the current
page: a button, a lower-case asin on a results page, or an option value on an item page. Anything
else changes nothing (the original's no-op); here the observation says why and ``invalid_action`` is
set. ``click[buy now]`` ends the episode and is the only rewarded step (see :mod:`.reward`).

Data: ``data_dir`` (or ``$AGENTRL_WEBSHOP_DATA``) holding the original files (see :mod:`.catalog`), or
``data_dir="builtin"`` (the default when neither is given) for a small generated catalog that is NOT
the benchmark. ``info["catalog"]`` and ``info["benchmark"]`` say which one an episode used.

Task ids are the original goal indices (after its seed-233 shuffle). Splits follow the original:
``test`` = goals [0, 500), ``valid`` (the original's ``eval``; ``"eval"`` is accepted) = [500, 1500),
``train`` = the rest. The built-in catalog scales those bounds by ``n_goals / 12,087`` (the benchmark's
number of human goals), keeping the same order: test first, then valid, then train.

Versions: v1 fixed three differences from the original found side by side with it (v0 observations,
search results and rewards can differ from v1's): the fuzzy ratio's non-ASCII processing (thefuzz
deletes only U+0080-U+00FF), one- and two-letter words left unstemmed as Lucene does (``search[s]``
raised in v0), and blank texts shown as the empty segments the original's text mode shows.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any, ClassVar

from agentrl.core import PromptSpec, TextEnv, clean_action

from . import builtin, pages
from .catalog import ENV_VAR, Catalog, build_catalog, load_catalog
from .reward import describe_options, get_reward, resolve_noun_scorer, token_set_ratio
from .search import SEARCH_RETURN_N, SearchEngine

#: The original's action grammar (``engine.parse_action``): ``name[argument]``, matched from the start.
ACTION_PATTERN = re.compile(r"(.+)\[(.+)\]")
SEARCH_HINT = "search[<keywords>]"
BUILTIN = "builtin"

_CACHE: dict[tuple, tuple[Catalog, SearchEngine]] = {}
_CACHE_LOCK = threading.Lock()


def get_catalog(
    data_dir: str | None, *, human_goals: bool, num_products: int | None, price_seed: int, builtin_products: int
) -> tuple[Catalog, SearchEngine]:
    """The catalog and its search index, built once per process and shared read-only by all envs."""
    source = data_dir or os.environ.get(ENV_VAR) or BUILTIN
    source = BUILTIN if source == BUILTIN else os.path.abspath(os.path.expanduser(source))
    key = (source, human_goals, num_products, price_seed, builtin_products if source == BUILTIN else None)
    with _CACHE_LOCK:
        if key not in _CACHE:
            if source == BUILTIN:
                raw = builtin.raw_catalog(builtin_products, builtin.DEFAULT_SEED)
                catalog = build_catalog(
                    *raw, name=BUILTIN, is_benchmark=False, human_goals=human_goals,
                    num_products=num_products, price_seed=price_seed,
                )  # fmt: skip
            else:
                catalog = load_catalog(source, human_goals=human_goals, num_products=num_products, price_seed=price_seed)
            _CACHE[key] = (catalog, SearchEngine(catalog.products))
        return _CACHE[key]


@dataclass
class Session:
    """Per-episode state (the original's ``user_sessions[session_id]``)."""

    goal: dict[str, Any]
    page: pages.Page
    keywords: str | None = None
    results: list[str] = field(default_factory=list)
    page_num: int = 1
    asin: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    sub_page: str | None = None
    reward: float = 0.0
    reward_info: dict[str, Any] | None = None


class WebShopEnv(TextEnv):
    """WebShop: search, open products, choose options, buy. Reward only at ``click[buy now]``."""

    splits: ClassVar[tuple[str, ...]] = ("train", "valid", "test")
    prompt: ClassVar[PromptSpec] = PromptSpec(
        "You are shopping on a web store for the user's request. Use search[query] and click[button] commands."
    )

    def __init__(
        self,
        *,
        data_dir: str | None = None,
        split: str | None = None,
        human_goals: bool = True,
        num_products: int | None = None,
        price_seed: int = 0,
        noun_scorer: str = "auto",
        builtin_products: int = builtin.DEFAULT_PRODUCTS,
        max_turns: int = 15,
        render_mode: str | None = None,
    ):
        super().__init__(split="valid" if split == "eval" else split, max_turns=max_turns, render_mode=render_mode)
        self.noun_scorer = resolve_noun_scorer(noun_scorer)
        self.catalog, self.engine = get_catalog(
            data_dir, human_goals=human_goals, num_products=num_products, price_seed=price_seed,
            builtin_products=builtin_products,
        )  # fmt: skip
        self.session: Session | None = None

    # -- panels ---------------------------------------------------------------------------------

    def task_ids(self, split: str | None = None) -> list[str]:
        return [str(i) for i in self.catalog.split_range(split or self.split)]

    # -- episode --------------------------------------------------------------------------------

    def _reset_task(self, task_id: str) -> tuple[str, dict[str, Any]]:
        n = len(self.catalog.goals)
        if not task_id.isdigit() or int(task_id) >= n:
            raise ValueError(f"unknown WebShop task {task_id!r}: task ids are goal indices '0'..'{n - 1}'")
        goal = self.catalog.goals[int(task_id)]
        self.session = Session(goal=goal, page=pages.search_page(goal["instruction_text"]))
        info = self._info()
        info.update(
            instruction=goal["instruction_text"],
            catalog=self.catalog.name,
            benchmark=self.catalog.is_benchmark,
            noun_scorer=self.noun_scorer,
        )
        return self.session.page.text, info

    def _step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        session = self.session
        text, problem = clean_action(action)
        name = arg = None
        if problem is None:
            match = ACTION_PATTERN.match(text)
            if match is None:
                problem = "actions look like search[keywords] or click[element]"
            else:
                name, arg = match.group(1), match.group(2).lower()
        if problem is None and name == "search":
            if not arg.strip():
                problem = "search needs keywords"
            else:
                self._search(arg)
                return session.page.text, 0.0, False, self._info()
        elif problem is None and name == "click":
            if arg == "search" or arg not in session.page.clickables:
                problem = f"'{arg}' is not a clickable element of this page"
            else:
                done = self._click(arg)
                if done:
                    return session.page.text, session.reward, True, self._final_info()
                return session.page.text, 0.0, False, self._info()
        elif problem is None:
            problem = f"unknown action '{name}'; use search[keywords] or click[element]"
        info = self._info()
        info["invalid_action"] = True
        return f"Invalid action: {problem}; nothing happened.\n{session.page.text}", 0.0, False, info

    def _search(self, keywords: str) -> None:
        session = self.session
        session.keywords = keywords
        session.results = self.engine.search(keywords, SEARCH_RETURN_N)
        self._show_results(1)

    def _show_results(self, page_num: int) -> None:
        session = self.session
        session.page_num, session.asin, session.options, session.sub_page = page_num, None, {}, None
        window = session.results[(page_num - 1) * pages.PRODUCT_WINDOW : page_num * pages.PRODUCT_WINDOW]
        products = [self.catalog.by_asin[a] for a in window]
        session.page = pages.results_page(session.goal["instruction_text"], products, page_num, len(session.results))

    def _show_item(self) -> None:
        session = self.session
        session.sub_page = None
        session.page = pages.item_page(session.goal["instruction_text"], self.catalog.by_asin[session.asin])

    def _click(self, label: str) -> bool:
        """Follow the original server's routing (``SimServer.receive``); True when the purchase ends the episode."""
        session = self.session
        clickable = session.page.clickables[label]
        kind = session.page.kind
        instruction = session.goal["instruction_text"]
        if label == pages.END_BUTTON.lower():
            self._buy()
            return True
        if label == pages.BACK_TO_SEARCH.lower():
            session.page, session.keywords, session.results = pages.search_page(instruction), None, []
            session.page_num, session.asin, session.options, session.sub_page = 1, None, {}, None
        elif label == pages.NEXT_PAGE.lower() and kind == "results":
            self._show_results(session.page_num + 1)
        elif label == pages.PREV_PAGE.lower() and kind == "results":
            self._show_results(session.page_num - 1)
        elif label == pages.PREV_PAGE.lower() and kind in ("description", "features", "reviews"):
            self._show_item()
        elif label == pages.PREV_PAGE.lower() and kind == "item":
            self._show_results(session.page_num)
        elif label in (p.lower() for p in pages.SUB_PAGES):
            which = next(p for p in pages.SUB_PAGES if p.lower() == label)
            session.sub_page = which
            session.page = pages.sub_page(instruction, self.catalog.by_asin[session.asin], which)
        else:
            if clickable.kind == "product":
                session.asin = clickable.value
            elif clickable.kind == "option":
                session.options[clickable.value] = label
            self._show_item()
        return False

    def _buy(self) -> None:
        session = self.session
        product = self.catalog.by_asin[session.asin]
        price = self.catalog.prices[session.asin]
        session.reward, session.reward_info = get_reward(
            product, session.goal, price, session.options, scorer=self.noun_scorer
        )
        session.page = pages.done_page(session.reward)

    # -- info -----------------------------------------------------------------------------------

    def _admissible(self) -> list[str]:
        clicks = [f"click[{c}]" for c in self.session.page.clickables if c != "search"]
        return [SEARCH_HINT, *clicks]

    def _info(self) -> dict[str, Any]:
        session = self.session
        return {
            "won": False,
            "progress": 0.0,
            "page": session.page.kind,
            "asin": session.asin,
            "options": dict(session.options),
            "admissible_actions": self._admissible(),
        }

    def _final_info(self) -> dict[str, Any]:
        session = self.session
        return {
            "won": session.reward == 1.0,
            "progress": session.reward,
            "page": "done",
            "asin": session.asin,
            "options": dict(session.options),
            "purchased_asin": session.asin,
            "goal_asin": session.goal["asin"],
            "reward_info": session.reward_info,
            "noun_scorer": self.noun_scorer,
            "admissible_actions": [],
        }

    # -- the scripted shopper -------------------------------------------------------------------

    def expert_action(self) -> str | None:
        """An oracle shopper: search the goal's words, open the goal product, choose its options, buy.

        It searches the instruction without the price clause; on a results page it opens the goal
        product when listed, else pages on (up to the 5 pages of the top 50); when the goal is not in
        the results it searches once more with the goal product's name, and failing that opens the
        first product listed. On an item page it clicks each goal option it can match, then buys.
        ``None`` when the episode is over or nothing sensible is left (an empty result page).
        """
        session = self.session
        if session is None or self.episode_over:
            return None
        goal = session.goal
        page = session.page
        if page.kind == "search":
            return f"search[{search_keywords(goal['instruction_text'])}]"
        if page.kind == "results":
            target = goal["asin"].lower()
            if target in page.clickables:
                return f"click[{target}]"
            if session.page_num * pages.PRODUCT_WINDOW < len(session.results):
                return f"click[{pages.NEXT_PAGE.lower()}]"
            name = " ".join(goal["name"].lower().replace("[", " ").replace("]", " ").split())
            if session.keywords != name:  # not in the top 50: try once more with the product's name
                return f"search[{name}]"
            listed = [c for c, v in page.clickables.items() if v.kind == "product"]
            return f"click[{listed[0]}]" if listed else None
        if page.kind in ("description", "features", "reviews"):
            return f"click[{pages.PREV_PAGE.lower()}]"
        if page.kind == "item":
            choice = self._next_option(describe_options(goal["goal_options"]))
            return f"click[{choice}]" if choice else f"click[{pages.END_BUTTON.lower()}]"
        return None

    def _next_option(self, wanted: list[str]) -> str | None:
        """The value to click for the first goal option not chosen yet (exact match, else best fuzzy > 85)."""
        product = self.catalog.by_asin[self.session.asin]
        for target in wanted:
            target = target.lower()
            for name, values in product["options"].items():
                best = target if target in values else None
                if best is None:
                    scored = [(token_set_ratio(v, target), v) for v in values]
                    score, value = max(scored, default=(0, None))
                    best = value if score > 85 else None
                if best is not None:
                    clickable = self.session.page.clickables.get(best) == pages.Clickable("option", name)
                    # a value with '[' cannot be clicked (the original's action pattern splits on it)
                    if self.session.options.get(name) != best and clickable and "[" not in best:
                        return best
                    break
        return None

    def _close(self) -> None:
        self.session = None


def search_keywords(instruction: str) -> str:
    """The instruction without its price clause (what the scripted shopper types)."""
    words = instruction.split(", and price lower than")[0].lower().replace("[", " ").replace("]", " ")
    return " ".join(words.split())
