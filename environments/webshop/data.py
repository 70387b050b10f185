"""``agentrl data fetch|check webshop``: the original WebShop catalog files.

The files live on Google Drive (ids from the original's ``setup.sh``). ``fetch`` downloads the
1,000-product catalog (``setup.sh -d small``) plus the human instructions; with ``full=True`` (or
``AGENTRL_WEBSHOP_FULL=1``) the full ~1.18M-product catalog (``-d all``, several GB). The WebShop data
is licensed for academic and research use only; ``fetch`` says so before downloading.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from agentrl.errors import UserError

from . import catalog

DRIVE_URL = "https://drive.usercontent.google.com/download?id={id}&export=download&confirm=t"
SMALL_FILES = {
    "items_shuffle_1000.json": "1EgHdxQ_YxqIQlvvq5iKlCrkEKR6-j0Ib",
    "items_ins_v2_1000.json": "1IduG0xl544V_A_jv3tHXC0kyFi7PnyBu",
    "items_human_ins.json": "14Kb5SPBk_jfdLZ_CDBNitW98QLDlKR5O",
}
FULL_FILES = {
    "items_shuffle.json": "1A2whVgOO0euk5O13n2iYDM0bQRkkRduB",
    "items_ins_v2.json": "1s2j6NgHljiZzQNL3veZaAiyW_qDEgBNi",
    "items_human_ins.json": "14Kb5SPBk_jfdLZ_CDBNitW98QLDlKR5O",
}
LICENSE_NOTICE = (
    "The WebShop data (princeton-nlp/WebShop, Yao et al. 2022) is licensed for academic and research use only."
)


def default_sources(full: bool = False) -> dict[str, str]:
    """File name -> download URL of the original data."""
    files = FULL_FILES if full else SMALL_FILES
    return {name: DRIVE_URL.format(id=file_id) for name, file_id in files.items()}


def _manual_hint(dest: Path, sources: dict[str, str]) -> str:
    lines = "; ".join(f"{name} <- {url}" for name, url in sources.items())
    return (
        f"download the files by hand on a machine with network access ({lines}), put them in {dest}, "
        f"and set {catalog.ENV_VAR}={dest} (or pass data_dir=...)"
    )


def _download(url: str, target: Path, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (URL from our own table)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as tmp:
            shutil.copyfileobj(response, tmp)
            partial = Path(tmp.name)
    with open(partial, "rb") as f:
        head = f.read(64).lstrip()
    if not head.startswith((b"[", b"{")):
        partial.unlink()
        raise ValueError("the server did not return a JSON file (quota page or login page?)")
    os.replace(partial, target)


def fetch(
    dest: Path | None = None,
    *,
    full: bool | None = None,
    sources: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download the WebShop files into ``dest`` (default: the env's data root) and return it.

    Files already present are kept. Raises ``UserError`` with the manual steps when a download fails.
    """
    if full is None:
        full = os.environ.get("AGENTRL_WEBSHOP_FULL", "") not in ("", "0")
    dest = Path(dest) if dest is not None else catalog.default_data_root()
    sources = dict(sources) if sources is not None else default_sources(full)
    dest.mkdir(parents=True, exist_ok=True)
    print(LICENSE_NOTICE, flush=True)
    for name, url in sources.items():
        target = dest / name
        if target.exists():
            continue
        print(f"downloading {name} ...", flush=True)
        try:
            _download(url, target, timeout)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise UserError(f"could not download {name} from {url}: {exc}", hint=_manual_hint(dest, sources)) from None
    return dest


def check(root: Path | None = None) -> dict[str, Any]:
    """What a WebShop data root holds: files, products (and how many were skipped), goals per split."""
    root = Path(root) if root is not None else catalog.default_data_root()
    try:
        cat = catalog.load_catalog(root)
    except catalog.MissingCatalogError as exc:
        raise UserError(str(exc), hint=f"run `{catalog.FETCH_HINT}`") from None
    files = catalog.find_files(root)
    report: dict[str, Any] = {"root": str(root), "benchmark": cat.is_benchmark}
    report.update({f"file {k}": (v.name if v else "missing") for k, v in files.items()})
    report["products"] = len(cat.products)
    report["malformed products skipped"] = cat.skipped_products
    report["goals"] = len(cat.goals)
    report["goals skipped (no attributes)"] = cat.skipped_goals
    for split in ("test", "valid", "train"):
        indices = cat.split_range(split)
        report[f"split {split}"] = f"{len(indices)} goals ({indices.start}..{max(indices.start, indices.stop - 1)})"
    return report
