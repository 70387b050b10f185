"""Tiny, local, download-free models for tests, benchmarks and CPU learning proofs.

``tiny_model(directory)`` writes a Hugging Face model directory (config, weights, tokenizer with a
chat template) that ``transformers.AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load like any hub model, so every backend (transformers, our
OpenAI-compatible server, vLLM) can be exercised without the network:

* the tokenizer is a byte-level BPE trained with ``tokenizers`` on the text you pass (environment
  observations, instructions, actions) plus a small built-in corpus, so an action is a few tokens
  and any unicode string still round-trips;
* the chat template is ChatML (``<|im_start|>role\\n...<|im_end|>\\n``, as Qwen2), or, with
  ``chat_template="reasoning"``, a Qwen3-like template that drops ``<think>...</think>`` from earlier
  assistant turns: the kind of template that breaks the prefix property of the concat layout;
* the model is a Qwen2 (Llama-style) decoder built from a config with random weights.

Example::

    from agentrl.testing import tiny_model
    path = tiny_model("/tmp/tiny", texts=["You are in a kitchen.", "open the fridge"])
    policy = agentrl.policies.HFPolicy(path)
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from agentrl.trajectory import Episode, Step, Transcript

#: Special tokens of the ChatML family; ``<|im_end|>`` ends an assistant turn (the EOS of a chat).
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

#: Like Qwen3: reasoning inside ``<think>...</think>`` is removed from assistant turns when rendered
#: again, so an earlier turn's text changes once the conversation moves on.
REASONING_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- set content = message['content'] %}"
    "{%- if message['role'] == 'assistant' and '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

CHAT_TEMPLATES = {"chatml": CHATML_TEMPLATE, "reasoning": REASONING_TEMPLATE}

_BASE_CORPUS = [
    "You are an agent in a text game. Reply with one command inside <action>...</action>.",
    "<action>look</action> <action>inventory</action> <action>go north</action> <action>take key</action>",
    "Admissible actions: open door, close door, go east, go west, go south, examine table, put apple on table",
    "<think>I should open the chest first.</think><action>open chest</action>",
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'\"()[]{}<>/\\|-_+=*&^%$#@~`",
    "Your task is to find the key and unlock the box. You see a room with a table, a chair and a door.",
]


def installed_cli() -> str:
    """The ``agentrl`` console script installed with the Python running this code.

    Tests of the command line run it for real, in a subprocess, so they see exactly what a user
    sees (the error formatting, the exit codes); the script next to ``sys.executable`` is the one
    this interpreter's install made, where a bare ``agentrl`` on ``PATH`` may belong to another.
    """
    return shutil.which("agentrl", path=str(Path(sys.executable).parent)) or shutil.which("agentrl") or "agentrl"


def install_plugin(files: dict[str, str], directory: str | Path) -> dict[str, str]:
    """Build and ``pip install --target`` a plug-in package from ``{relative path: source}`` (dedented).

    The package is written under ``directory/src`` and installed into ``directory/site``; returns a copy
    of ``os.environ`` whose ``PYTHONPATH`` makes a subprocess see it (entry points included).
    """
    import os
    import subprocess
    import textwrap

    src, target = Path(directory) / "src", Path(directory) / "site"
    for rel, text in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(textwrap.dedent(text))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(src)],
        check=True, capture_output=True,
    )  # fmt: skip
    return dict(os.environ, PYTHONPATH=str(target))


def tiny_tokenizer(texts: Iterable[str] = (), *, vocab_size: int = 1024, chat_template: str = "chatml"):
    """A ``PreTrainedTokenizerFast`` (byte-level BPE) trained on ``texts`` with a chat template set.

    ``chat_template`` is ``"chatml"``, ``"reasoning"`` or a Jinja template string.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(_BASE_CORPUS) + [str(t) for t in texts], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATES.get(chat_template, chat_template)
    return fast


def tiny_model(
    directory: str | Path,
    texts: Iterable[str] = (),
    *,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 4096,
    chat_template: str = "chatml",
    seed: int = 0,
) -> str:
    """Write a tiny Qwen2 model + tokenizer to ``directory`` and return its path (a string).

    Deterministic for the same arguments and ``seed``. A few hundred thousand parameters by default:
    fast enough for CPU tests, shaped like the real thing (GQA, RoPE, RMSNorm, tied embeddings).
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer(texts, vocab_size=vocab_size, chat_template=chat_template)
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "agentrl_tiny.json").write_text(json.dumps({"chat_template": chat_template, "seed": seed}) + "\n")
    return str(directory)


def env_corpus(
    env_id: str = "textworld",
    *,
    split: str | None = None,
    tasks: int = 40,
    env_args: dict[str, Any] | None = None,
    on_task: Any = None,
) -> list[str]:
    """Text to train a :func:`tiny_model`'s tokenizer on: first observations, instructions and admissible actions.

    Resets the first ``tasks`` tasks of ``split`` (the env's first split by default) of ``env_id``, so a
    word of the env is about one token and an action a handful. ``on_task()`` is called after each
    reset (a progress bar). TextWorld generates (and caches) each game on its first reset.
    """
    import agentrl

    env = agentrl.make(env_id, **({"split": split} if split else {}), **(env_args or {}))
    texts: list[str] = []
    try:
        for task in env.task_ids()[:tasks]:
            obs, info = env.reset(options={"task": task})
            texts += [obs, str(info.get("instruction") or ""), ", ".join(info.get("admissible_actions") or [])]
            if on_task is not None:
                on_task()
    finally:
        env.close()
    return [t for t in texts if t]


def token_episode(
    turns: Sequence[dict[str, Any]],
    *,
    layout: str = "concat",
    env_id: str = "agentrl/Test-v0",
    task_id: str = "t",
    group_id: str | None = None,
    **fields: Any,
) -> Episode:
    """A model episode from per-turn token data, with the transcripts an agent would have written.

    Each turn is a dict with ``prompt`` and ``response`` ids and optionally ``reward``,
    ``loss_mask``, ``logprobs``, ``entropies``, ``version``, ``env_seconds``, ``observation``,
    ``action`` and ``allowed`` (constrained decoding's allowed ids per response token, ``None`` where free). In the concat layout a turn whose prompt extends the open transcript appends to it
    (only the new prompt ids, then the response); any other turn, and every turn with
    ``layout="per_step"``, starts a new transcript. For synthetic batches in tests and benchmarks.
    """
    steps, transcripts = [], []
    for index, t in enumerate(turns):
        steps.append(
            Step(
                observation=t.get("observation", f"observation {index}"), action=t.get("action", "act"),
                reward=float(t.get("reward", 0.0)), env_seconds=float(t.get("env_seconds", 0.0)),
                policy_version=t.get("version"),
            )
        )  # fmt: skip
        prompt = list(t["prompt"])
        current = transcripts[-1] if transcripts and layout == "concat" else None
        if current is None or prompt[: len(current.ids)] != current.ids:
            current = Transcript()
            transcripts.append(current)
        current.append_prompt(prompt[len(current.ids) :], index)
        current.append_sampled(
            t["response"], index, logprobs=t.get("logprobs"), entropies=t.get("entropies"),
            loss_mask=t.get("loss_mask"), version=t.get("version"), allowed=t.get("allowed"),
        )  # fmt: skip
    return Episode(env_id=env_id, task_id=task_id, group_id=group_id, steps=steps, transcripts=transcripts, **fields)


def hub_cache(model_dir: str | Path, cache_dir: str | Path, repo_id: str, *, commit: str | None = None) -> Path:
    """Lay ``model_dir`` out as Hub model ``repo_id`` in a Hugging Face cache; returns the snapshot directory.

    The layout is huggingface_hub's own: ``models--ORG--NAME/blobs/<sha256>`` holds the files,
    ``snapshots/<commit>/<file>`` are relative symlinks to them and ``refs/main`` names the commit.
    With ``HF_HUB_CACHE=cache_dir`` and ``HF_HUB_OFFLINE=1``, transformers loads ``repo_id`` from it
    without any network: how the tests check that Hub ids work everywhere a model path does.
    ``commit`` defaults to a hash of the files (40 hex digits, like a git commit).
    """
    import hashlib

    files = sorted(p for p in Path(model_dir).iterdir() if p.is_file())
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    commit = commit or hashlib.sha1(json.dumps(digests, sort_keys=True).encode()).hexdigest()
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in files:
        blob = repo / "blobs" / digests[path.name]
        if not blob.exists():
            blob.write_bytes(path.read_bytes())
        link = snapshot / path.name
        if not link.is_symlink():
            link.symlink_to(Path("..", "..", "blobs", digests[path.name]))
    (repo / "refs" / "main").write_text(commit)
    return snapshot
