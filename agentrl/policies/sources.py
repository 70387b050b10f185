"""Where a model comes from: a local directory or a Hugging Face Hub id.

:func:`model_source` is the one place that decides what a model string means, so that every entry
point (``HFPolicy``, ``VLLMPolicy``, the recipes, ``agentrl eval --model``, ``agentrl serve``, the
rollout workers) accepts the same things:

* an existing local directory: a Hugging Face model directory (it must hold ``config.json``);
* ``ORG/NAME`` (or ``NAME``): a Hub id, loaded by transformers through huggingface_hub's cache
  (``$HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``). With ``HF_HUB_OFFLINE=1`` nothing is
  downloaded, so the id must already be in that cache; without it, transformers downloads what is
  missing;
* anything that looks like a path (absolute, ``./``, ``../``, ``~``, more than one ``/``) but does not
  exist: an error, never a Hub lookup.

Every failure is one :class:`~agentrl.policies.base.PolicyError` that names the model (and, for a
Hub id, the cache), never a traceback from deep inside transformers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from agentrl.policies.base import PolicyError


def model_source(spec: str | os.PathLike[str]) -> str:
    """What to give ``from_pretrained`` for ``spec``: a checked local directory, or a Hub id (see the module docstring)."""
    text = str(spec)
    path = Path(text).expanduser()
    hint = "pass a directory written by save_pretrained (config.json, weights, tokenizer files) or a Hub id (ORG/NAME)"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PolicyError(f"model {text!r} is not a Hugging Face model directory (no config.json there)", hint=hint)
        return str(path)
    if path.exists():
        raise PolicyError(f"model {text!r} is a file; pass a Hugging Face model directory or a Hub id (ORG/NAME)")
    if _looks_local(text):
        raise PolicyError(f"model {text!r} not found: no such local directory", hint=hint)
    if not _is_hub_id(text):
        raise PolicyError(f"model {text!r} not found: neither a local directory nor a Hugging Face Hub id (ORG/NAME)", hint=hint)
    if _hub_offline() and hub_snapshot(text) is None:
        raise PolicyError(
            f"model {text!r} not found: not a local directory, and with HF_HUB_OFFLINE=1 it must be in the Hugging "
            f"Face cache {_hub_cache()}, which does not hold it (download it there with `hf download {text}`, point "
            "HF_HUB_CACHE at a cache that has it, or unset HF_HUB_OFFLINE)"
        )
    return text


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The cached snapshot directory of Hub model ``repo_id`` (``revision`` default ``main``), or ``None``.

    Only looks at the local cache (never the network). The directory's name is the commit hash, so
    ``hub_snapshot(id).name`` pins the exact weights a run started from (see :func:`hub_revision`).
    """
    from huggingface_hub import try_to_load_from_cache

    if not _is_hub_id(repo_id):
        return None
    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return Path(found).parent if isinstance(found, str) else None


def hub_revision(spec: str) -> str | None:
    """The commit hash of a Hub id's cached ``main`` (``None`` for a local directory or an id not cached).

    Processes that load the same model later (rollout workers, restarted workers, a final export)
    pass it as ``revision`` so they get the weights the learner started from even if the Hub
    repository moved on meanwhile.
    """
    if Path(spec).expanduser().exists():
        return None
    snapshot = hub_snapshot(spec)
    return snapshot.name if snapshot is not None else None


def load_pretrained(loader: Any, spec: str, *, revision: str | None = None, **kwargs: Any) -> Any:
    """``loader.from_pretrained(source, ...)`` with :func:`model_source`'s checks; load errors become :class:`PolicyError`.

    ``loader`` is a transformers Auto class (``AutoModelForCausalLM``, ``AutoTokenizer``). Errors
    transformers raises for a model it cannot find or fetch (``OSError``: unknown repository, no
    network, a gated model) become one line naming the model.
    """
    source = model_source(spec)
    if revision is not None:
        kwargs["revision"] = revision
    try:
        return loader.from_pretrained(source, **kwargs)
    except OSError as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise PolicyError(f"cannot load model {spec!r}: {first}") from None


def load_tokenizer(spec: str, *, revision: str | None = None) -> Any:
    """A transformers tokenizer from a local directory or a Hub id (same rules as :func:`model_source`)."""
    from transformers import AutoTokenizer

    return load_pretrained(AutoTokenizer, spec, revision=revision)


def _looks_local(text: str) -> bool:
    """A spec the user meant as a path: never looked up on the Hub (a typo there would be a confusing Hub error)."""
    return (
        os.path.isabs(text)
        or text.startswith(("./", "../", "~", ".\\"))
        or text in (".", "..")
        or text.count("/") > 1
        or "\\" in text
        or text.endswith("/")
    )


def _is_hub_id(text: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)
