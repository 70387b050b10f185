"""WebShop's search engine without Java: BM25 with Lucene's scoring over the original's documents.

The original indexes one document per product with pyserini (Lucene), ``contents`` =
``" ".join([Title, Description, BulletPoints[0], option_text]).lower()`` where ``option_text`` is
``"name: v1, v2, and name2: ..."`` (``search_engine/convert_product_file_format.py``), and returns the
top 50 hits of ``LuceneSearcher.search(keywords, k=50)``.

Here the same documents go through an analyzer that mirrors Anserini's default English analyzer
(word tokens, possessive ``'s`` dropped, lower case, Lucene's English stop words, Porter stemming via
PyStemmer's ``porter`` applied, as Lucene's ``PorterStemmer`` does, only to words of three or more
characters), and are scored by ``bm25s`` with ``method="lucene"`` and pyserini's default
parameters ``k1=0.9, b=0.4``. Ties are broken by index order, as Lucene does. Known differences:
Lucene stores document lengths in a lossy one-byte encoding and its tokenizer follows Unicode word
breaks, so scores can differ in the last digits and rare tokens can split differently.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

SEARCH_RETURN_N = 50
K1 = 0.9
B = 0.4

#: Lucene's ``EnglishAnalyzer.ENGLISH_STOP_WORDS_SET`` (Anserini's default stop words).
LUCENE_STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there "
    "these they this to was will with".split()
)
_TOKEN = re.compile(r"[^\W_]+(?:['’.][^\W_]+)*")


class Analyzer:
    """Text -> index terms, as Anserini's DefaultEnglishAnalyzer does (see the module docstring)."""

    def __init__(self) -> None:
        import Stemmer

        self._stemmer = Stemmer.Stemmer("porter")
        self._stemmer.maxCacheSize = 100_000

    def __call__(self, text: str) -> list[str]:
        """The index terms of ``text``: never an empty string.

        Lucene's ``PorterStemmer.stem`` leaves words of one or two characters alone (``if (k > k0+1)``,
        from Porter's C original), while Snowball's ``porter`` stems ``s`` to the empty string and
        ``xs`` to ``x``. An empty term is also what bm25s cannot score (it is in the vocabulary but
        has no posting list, and ``get_scores`` raises), so short words pass through unstemmed.
        """
        terms = []
        for token in _TOKEN.findall(text.lower()):
            if token.endswith(("'s", "’s")):
                token = token[:-2]
            token = token.replace("’", "'")
            if token and token not in LUCENE_STOP_WORDS:
                terms.append(token if len(token) <= 2 else self._stemmer.stemWord(token))
        return terms


def option_text(options: dict[str, list[str]]) -> str:
    return ", and ".join(f"{name}: {', '.join(values)}" for name, values in options.items())


def document_text(product: dict[str, Any]) -> str:
    """The text the original indexes for one product."""
    bullets = product.get("BulletPoints") or [""]
    return " ".join(
        [product["Title"], product["Description"], str(bullets[0]), option_text(product["options"])]
    ).lower()


class SearchEngine:
    """BM25 (Lucene variant) over a fixed list of products; ``search`` returns asins, best first."""

    def __init__(self, products: Sequence[dict[str, Any]]):
        import bm25s

        self.analyzer = Analyzer()
        self.asins = [p["asin"] for p in products]
        corpus = [self.analyzer(document_text(p)) for p in products]
        self._retriever = bm25s.BM25(method="lucene", k1=K1, b=B)
        self._retriever.index(corpus, show_progress=False)

    def scores(self, keywords: str) -> np.ndarray:
        """BM25 score of every product for ``keywords`` (a repeated query term counts again, as in Lucene)."""
        terms = self.analyzer(keywords)
        if not terms:
            return np.zeros(len(self.asins), dtype=np.float32)
        return np.asarray(self._retriever.get_scores(terms))

    def search(self, keywords: str, k: int = SEARCH_RETURN_N) -> list[str]:
        """The asins of the top ``k`` products that match at least one term, best first."""
        scores = self.scores(keywords)
        hits = np.flatnonzero(scores > 0)
        if hits.size == 0:
            return []
        if hits.size > k:  # keep the k best (plus ties at the cut) before the exact sort
            cut = np.partition(scores[hits], hits.size - k)[hits.size - k]
            hits = hits[scores[hits] >= cut]
        order = np.lexsort((hits, -scores[hits]))  # score descending, then index order
        return [self.asins[i] for i in hits[order][:k]]
