"""The pages of the WebShop site as the original's text mode shows them, and what can be clicked.

The original renders Jinja templates to HTML and its text mode joins the visible text nodes with
`` [SEP] `` (``WebAgentTextEnv.convert_html_to_text(simple=True)``: ``t.strip()`` of every node that is
not ``'\n'``). These functions produce the same text directly from the templates' structure (``search_page.html``, ``results_page.html``,
``item_page.html``, ``description_page.html``, ``features_page.html``, ``review_page.html``), and the
clickables the original collects with BeautifulSoup: button texts lower-cased, product links (the asin,
lower-cased) and option values (``get_available_actions``).

The page after a purchase is shortened: the original's done page also prints an MTurk code and a
hidden block with the goal; here it shows the thank-you line and the score only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SEP = " [SEP] "
PRODUCT_WINDOW = 10

BACK_TO_SEARCH = "Back to Search"
NEXT_PAGE = "Next >"
PREV_PAGE = "< Prev"
END_BUTTON = "Buy Now"
SUB_PAGES = ("Description", "Features", "Reviews")


@dataclass(frozen=True)
class Clickable:
    """One clickable element: ``kind`` is ``button``, ``product`` (value = asin) or ``option`` (value = option name)."""

    kind: str
    value: str = ""


@dataclass
class Page:
    """A rendered page: its kind, its text observation, and its clickables by lower-cased text."""

    kind: str  # search | results | item | description | features | reviews | done
    text: str
    clickables: dict[str, Clickable] = field(default_factory=dict)


#: What BeautifulSoup (4.11, the original's pin) counts as whitespace when it collapses a text node.
_BS4_ASCII_SPACES = dict.fromkeys(map(ord, " \n\t\x0c\r"))


def _node(text: Any) -> str | None:
    """What the original's text mode shows for one HTML text node of the rendered template.

    ``text`` is the node's whole text (template literal around the data included). An empty node
    does not exist (``<p></p>`` has no text node); BeautifulSoup collapses a node of ASCII whitespace
    to ``'\n'`` when it holds a newline (then filtered out) and to ``' '`` otherwise, which shows as
    an empty segment (a blank description, or an empty bullet point, rendered ``" {{bulletpoint}}"``);
    anything else is shown stripped. ``None``: no segment.
    """
    text = str(text)
    if not text:
        return None
    if not text.translate(_BS4_ASCII_SPACES):
        return None if "\n" in text else ""
    return text.strip()


def _join(parts: list[str | None]) -> str:
    """The `` [SEP] ``-joined segments; ``None`` (a node that does not show) is left out."""
    return SEP.join(p for p in parts if p is not None)


def _button(clickables: dict[str, Clickable], label: str) -> str:
    clickables[label.lower()] = Clickable("button")
    return label


def search_page(instruction: str) -> Page:
    clickables: dict[str, Clickable] = {}
    parts = ["WebShop", "Instruction:", _node(instruction), _button(clickables, "Search")]
    return Page("search", _join(parts), clickables)


def results_page(instruction: str, products: list[dict[str, Any]], page: int, total: int) -> Page:
    """Page ``page`` (1-based) of a result list of ``total`` products; ``products`` are this page's."""
    clickables: dict[str, Clickable] = {}
    parts = ["Instruction:", _node(instruction), _button(clickables, BACK_TO_SEARCH), f"Page {page} (Total results: {total})"]
    if page > 1:
        parts.append(_button(clickables, PREV_PAGE))
    parts.append(_button(clickables, NEXT_PAGE))  # the original's template always shows it
    for product in products:
        clickables[product["asin"].lower()] = Clickable("product", product["asin"])
        parts += [_node(product["asin"]), _node(product["Title"]), _node(product["Price"])]
    return Page("results", _join(parts), clickables)


def item_page(instruction: str, product: dict[str, Any]) -> Page:
    clickables: dict[str, Clickable] = {}
    parts = ["Instruction:", _node(instruction), _button(clickables, BACK_TO_SEARCH), _button(clickables, PREV_PAGE)]
    buttons = {}
    for name, values in product["options"].items():
        parts.append(_node(name))
        for value in values:
            parts.append(_node(value))
            buttons[value] = Clickable("option", name)
    parts += [_node(product["Title"]), _node(f"Price: {product['Price']}"), _node(f"Rating: {product['Rating']}")]
    parts += [_button(clickables, label) for label in SUB_PAGES]
    parts.append(_button(clickables, END_BUTTON))
    clickables.update(buttons)  # radio inputs are collected after buttons, so a value wins a clash
    return Page("item", _join(parts), clickables)


def sub_page(instruction: str, product: dict[str, Any], which: str) -> Page:
    """The Description, Features or Reviews page of ``product``.

    The text nodes are those of the templates: ``<p>{{Description}}</p>``, ``<p> {{bulletpoint}}</p>``
    (note the space: an empty bullet point is an empty segment), and per review
    ``"{{title}}"``, ``<span>{{score}}</span>``, ``<p>{{body}}</p>``.
    """
    clickables: dict[str, Clickable] = {}
    parts = ["Instruction:", _node(instruction), _button(clickables, BACK_TO_SEARCH), _button(clickables, PREV_PAGE)]
    if which == "Description":
        parts.append(_node(product["Description"]))
    elif which == "Features":
        parts += [_node(f" {bullet}") for bullet in product["BulletPoints"]]
    else:
        for review in product["Reviews"]:
            title, score, body = (review.get(k, "") for k in ("title", "score", "body"))
            parts += [_node(f'"{title}"'), _node(score), _node(body)]
    return Page(which.lower(), _join(parts), clickables)


def done_page(reward: float) -> Page:
    return Page("done", _join(["Thank you for shopping with us!", "Your score (min 0.0, max 1.0)", str(reward)]))
