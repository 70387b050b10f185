"""``agentrl view``: browse runs, episodes and evaluation reports in a local web page.

:mod:`.data` turns stores, run directories and report files into JSON data; :mod:`.app` serves it
with FastAPI next to the page in ``static/`` (plain HTML, CSS and JavaScript shipped in the package).
Import the submodules directly; this package imports nothing.
"""
