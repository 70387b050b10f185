"""Models on the command line: ``agentrl serve MODEL``, ``agentrl model tiny DIR`` and the ``--model`` path of ``agentrl eval``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from agentrl.cli.common import UserError, console, parse_kv_raw

app = typer.Typer(help="Make models to train and evaluate without downloading anything.", no_args_is_help=True)

if TYPE_CHECKING:
    from agentrl.cli.eval_options import EvalOptions


def load_model_for_eval(spec: str, *, tokenizer: str | None, api_key: str | None, seed: int) -> tuple[Any, Any]:
    """Load a policy; a missing path or an unreachable server is one line with a hint."""
    from agentrl.policies.base import PolicyError
    from agentrl.policies.loading import load_policy

    try:
        return load_policy(spec, tokenizer=tokenizer, api_key=api_key, seed=seed)
    except PolicyError as exc:
        hint = exc.hint or "--model takes a local HF model directory, a Hub id (ORG/NAME), vllm:MODEL or an http(s) URL"
        raise UserError(str(exc), hint=hint) from exc


def check_chat_tokenizer(tokenizer: Any, what: str) -> None:
    """A model agent renders prompts with the tokenizer's chat template: refuse a tokenizer without one."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None) is None:
        raise UserError(f"the {what}'s tokenizer has no chat template",
                        hint="use an instruction-tuned model, or set tokenizer.chat_template and save it")  # fmt: skip


def run_model_eval(
    opts: EvalOptions,
    env_id: str,
    instance: Any,
    policy: Any,
    tokenizer: Any,
    *,
    split: str,
    panel: list[str],
    env_kwargs: dict[str, Any],
    on_episode: Callable[[Any], Any],
):
    """Evaluate ``policy`` on ``panel`` through the collector; returns ``(EvalReport, model details)``."""
    import agentrl
    from agentrl.agents.llm import LLMAgent, prompt_format_for
    from agentrl.evaluation import evaluate_model
    from agentrl.policies.base import PolicyError

    prompt_format = prompt_format_for(env_id)
    check_chat_tokenizer(tokenizer, "model")
    if opts.admissible_only:
        if not policy.capabilities.constrained:
            raise UserError(f"--admissible-only needs a local Hugging Face model; {type(policy).__name__} has no constrained decoding")
        if tokenizer is None or not prompt_format.list_admissible:
            raise UserError(f"--admissible-only needs the admissible actions in the prompt; {env_id}'s prompt does not list them")
    agent = LLMAgent(tokenizer, prompt_format, layout=opts.layout, history=opts.history,  # type: ignore[arg-type]
                     admissible_only=opts.admissible_only)  # fmt: skip
    spare = [instance]  # the CLI's own instance is the first env; more are made as needed

    def env_fn():
        return spare.pop() if spare else agentrl.make(env_id, split=split, **env_kwargs)

    try:
        return evaluate_model(
            env_fn, policy, agent, env_id=env_id, split=split, panel=panel, sampling=opts.sampling(),
            group_size=opts.group_size, seed=opts.seed, max_parallel=opts.parallel, env_kwargs=env_kwargs,
            on_episode=on_episode, max_turns=instance.max_turns,
        )  # fmt: skip
    except PolicyError as exc:
        raise UserError(str(exc), hint=exc.hint or "is the model server up and the model name right?") from exc


def serve(
    model: Annotated[str, typer.Argument(help="Hugging Face model to serve: a local directory or a Hub id (ORG/NAME).")],
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 = any free port).")] = 8000,
    api_key: Annotated[str | None, typer.Option(help="Require this bearer token.")] = None,
    name: Annotated[str | None, typer.Option(help="Model name the API reports (default: the path).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when available).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the server's sampling generator (requests without a seed).")] = 0,
    max_batch_rows: Annotated[int, typer.Option(help="Most sequences concurrent requests share in one generate call.")] = 64,
    weights_dir: Annotated[str | None, typer.Option(help="Accept weight updates (POST /collective_rpc, /v1/load_lora_adapter) "
                                                    "of versions a learner publishes under this directory.")] = None,
) -> None:
    """Serve a Hugging Face model (directory or Hub id) over an OpenAI-compatible API (/v1/models, /v1/completions,
    /v1/chat/completions).

    FastAPI + uvicorn; concurrent requests are batched into one generate call; streaming, n, seed,
    stop, logprobs/top_logprobs as OpenAI; token ids in every choice (vLLM's return_token_ids). With
    --weights-dir, a learner can make it run each new version it publishes there (the routes vLLM offers
    for RL: see agentrl.policies.weight_routes).
    """
    from agentrl.policies.hf import HFPolicy
    from agentrl.policies.server import PolicyServer

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError("agentrl serve needs FastAPI and uvicorn", hint="pip install 'agentrl[serve]'") from None
    policy = HFPolicy(model, device=device, seed=seed, name=name)  # a bad path is a PolicyError with a hint
    try:
        server = PolicyServer(policy, host=host, port=port, api_key=api_key, model_name=name or model,
                              max_batch_rows=max_batch_rows, weights_dir=weights_dir)  # fmt: skip
    except OSError as exc:  # the bind: address in use, a privileged port, an address not on this machine
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", hint="choose another --port (0 = any free one)") from exc
    console.print(f"serving {server.model_name} at {server.url} (Ctrl-C to stop)", highlight=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


@app.command("tiny")
def tiny_cmd(
    directory: Annotated[str, typer.Argument(help="Directory to write the model to (created; must be empty or new).")],
    env: Annotated[str, typer.Option(help="Environment whose text trains the tokenizer.")] = "textworld",
    tasks: Annotated[int, typer.Option(help="Tasks of the env's first split whose text trains the tokenizer.")] = 40,
    vocab_size: Annotated[int, typer.Option(help="Tokenizer vocabulary (byte-level BPE).")] = 2000,
    hidden_size: Annotated[int, typer.Option(help="Model width.")] = 128,
    layers: Annotated[int, typer.Option(help="Decoder layers.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the random initial weights.")] = 0,
    env_arg: Annotated[list[str] | None, typer.Option("--env-arg", "-e", help="Env constructor argument key=value (repeatable).")] = None,
) -> None:
    """Write a tiny Qwen2-shaped chat model (about 1 M parameters, random weights) and a tokenizer trained on an env's text.

    Nothing is downloaded: the model is built from a config and the tokenizer is trained here, so
    `agentrl train RECIPE model=DIR` and `agentrl eval ENV --model DIR` work offline, on a laptop.
    The weights are random: train it (a supervised warm-up on expert demonstrations, then RL).
    """
    from pathlib import Path

    from agentrl.cli.env_setup import resolve_env
    from agentrl.progress import progress_bar, third_party_output
    from agentrl.testing import env_corpus, tiny_model

    target = Path(directory)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"{target} exists and is not an empty directory", hint="give a new directory")
    if tasks < 1 or vocab_size < 300 or hidden_size < 8 or layers < 1:
        raise UserError("--tasks, --layers must be >= 1, --hidden-size >= 8 and --vocab-size >= 300")
    entry, env_kwargs = resolve_env(env, parse_kv_raw(env_arg))
    third_party_output(verbose=False)
    with progress_bar(console) as bar:
        job = bar.add_task(f"reading {tasks} tasks of {entry.id}", total=tasks)
        texts = env_corpus(entry.id, tasks=tasks, env_args=env_kwargs, on_task=lambda: bar.advance(job))
    heads = max(1, hidden_size // 32)
    path = tiny_model(target, texts, vocab_size=vocab_size, hidden_size=hidden_size, num_layers=layers, num_heads=heads,
                      num_kv_heads=max(1, heads // 2), intermediate_size=3 * hidden_size, seed=seed)  # fmt: skip
    import json

    config = json.loads((target / "config.json").read_text())
    from transformers import AutoModelForCausalLM

    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(path).parameters())
    console.print(f"wrote {directory}: Qwen2, {params / 1e6:.2f} M parameters, vocabulary {config['vocab_size']} "
                  f"(tokenizer trained on {len(texts)} texts of {entry.id})", highlight=False, markup=False, soft_wrap=True)  # fmt: skip
    console.print(f"train it: agentrl train textworld_grpo model={directory}  (README: Train on a laptop)",
                  highlight=False, markup=False, soft_wrap=True)  # fmt: skip
