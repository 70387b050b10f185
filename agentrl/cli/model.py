"""Model agents on the command line: ``agentrl serve MODEL`` and the ``--model`` path of ``agentrl eval``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from agentrl.cli.common import UserError, console


def load_model_for_eval(spec: str, *, tokenizer: str | None, api_key: str | None, seed: int) -> tuple[Any, Any]:
    """Load a policy; a missing path or an unreachable server is one :class:`UserError` line."""
    from agentrl.policies.base import PolicyError
    from agentrl.policies.loading import load_policy

    try:
        return load_policy(spec, tokenizer=tokenizer, api_key=api_key, seed=seed)
    except PolicyError as exc:
        raise UserError(str(exc), hint="--model takes a local HF model directory, vllm:PATH or an http(s) URL") from None


def run_model_eval(
    env_id: str,
    instance: Any,
    policy: Any,
    tokenizer: Any,
    *,
    split: str,
    episodes: int | None,
    group_size: int,
    seed: int,
    env_kwargs: dict[str, Any],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    parallel: int,
    layout: str,
    history: int | None,
    on_episode: Callable[[Any], Any],
    admissible_only: bool = False,
):
    """Evaluate ``policy`` on the panel through the collector; returns ``(EvalReport, model details)``."""
    import agentrl
    from agentrl.agents.llm import ACTION_STOP, LLMAgent, prompt_format_for
    from agentrl.evaluation import evaluate_model
    from agentrl.policies.base import PolicyError, SamplingParams

    panel = instance.task_ids(split)
    panel = panel[:episodes] if episodes is not None else panel
    try:
        sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=(ACTION_STOP,))
        agent = LLMAgent(tokenizer, prompt_format_for(env_id), layout=layout, history=history,  # type: ignore[arg-type]
                         admissible_only=admissible_only)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if admissible_only and not policy.capabilities.constrained:
        raise UserError(f"--admissible-only needs a local Hugging Face model; {type(policy).__name__} has no constrained decoding")
    spare = [instance]  # the CLI's own instance is the first env; more are made as needed

    def env_fn():
        return spare.pop() if spare else agentrl.make(env_id, split=split, **env_kwargs)

    try:
        return evaluate_model(
            env_fn, policy, agent, env_id=env_id, split=split, panel=panel, sampling=sampling, group_size=group_size,
            seed=seed, max_parallel=parallel, env_kwargs=env_kwargs, on_episode=on_episode,
        )  # fmt: skip
    except PolicyError as exc:
        raise UserError(str(exc), hint="is the model server up and the model name right?") from None


def serve(
    model: Annotated[str, typer.Argument(help="Local Hugging Face model directory to serve.")],
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 = any free port).")] = 8000,
    api_key: Annotated[str | None, typer.Option(help="Require this bearer token.")] = None,
    name: Annotated[str | None, typer.Option(help="Model name the API reports (default: the path).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when available).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the server's sampling generator.")] = 0,
) -> None:
    """Serve a local model over an OpenAI-compatible API (/v1/models, /v1/completions, /v1/chat/completions)."""
    from agentrl.policies.base import PolicyError
    from agentrl.policies.hf import HFPolicy
    from agentrl.policies.server import PolicyServer

    try:
        policy = HFPolicy(model, device=device, seed=seed, name=name)
    except PolicyError as exc:
        raise UserError(str(exc), hint="pass a directory with config.json and tokenizer files") from None
    server = PolicyServer(policy, host=host, port=port, api_key=api_key, model_name=name or model)
    console.print(f"serving {server.model_name} at {server.url} (Ctrl-C to stop)", highlight=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
