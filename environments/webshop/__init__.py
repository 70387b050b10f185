"""WebShop (Yao et al., NeurIPS 2022) reimplemented in plain Python: ``agentrl/WebShop-v1``.

No Java, Flask or web server: the original's text observations, ``search[...]``/``click[...]``
actions and purchase reward, over the original catalog files (``data_dir`` or
``$AGENTRL_WEBSHOP_DATA``; ``agentrl data fetch webshop``) or a small generated catalog that is not
the benchmark. Modules: :mod:`.catalog` (the original's ``load_products`` and goals), :mod:`.search`
(BM25 with Lucene's scoring), :mod:`.reward` (``get_reward``), :mod:`.pages` (page text and
clickables), :mod:`.env` (the environment and its scripted shopper), :mod:`.builtin` (the generated
catalog) and :mod:`.data` (fetch/check).
"""
