"""vLLM backend (optional extra ``agentrl[vllm]``), written against vLLM's documented offline API.

``vllm.LLM(model=...)`` with ``LLM.generate(prompts, sampling_params)`` where each prompt is a
``TokensPrompt(prompt_token_ids=...)``: the ids we built go in verbatim and vLLM never tokenises the
prompt. ``SamplingParams(logprobs=0)`` returns the log-probability of each sampled token
(``CompletionOutput.logprobs[i][token_ids[i]].logprob``); we ask for ``logprobs_mode=
"processed_logprobs"`` where the installed vLLM has it, so the logprobs are those of the
temperature-scaled distribution, as in the other backends. vLLM does not expose the entropy of the
sampling distribution: ``entropies`` is ``None`` (learners recompute entropies from the ids).

Weight updates from a learner go through ``load_weights``, which calls the model's own
``load_weights`` in the engine (in-process engine only, ``VLLM_ENABLE_V1_MULTIPROCESSING=0``).
"""

from __future__ import annotations

from typing import Any

from agentrl.policies.base import Capabilities, Completion, PolicyError, SamplingParams


class VLLMPolicy:
    """A vLLM engine as a :class:`~agentrl.policies.base.Policy`. Extra kwargs go to ``vllm.LLM``.

    ``model`` is a local model directory or a Hugging Face Hub id, checked by
    :func:`~agentrl.policies.sources.model_source` (vLLM reads Hub ids through the same
    huggingface_hub cache and honours ``HF_HUB_OFFLINE``).
    """

    def __init__(self, model: str, *, seed: int = 0, name: str | None = None, **engine_kwargs: Any):
        try:
            import vllm
        except ImportError as exc:
            raise PolicyError(f"vLLM is not importable ({exc}); install it with pip install 'agentrl[vllm]'") from None
        from agentrl.policies.sources import model_source

        model = model_source(model)
        self._vllm = vllm
        kwargs = {"model": model, "seed": seed, "enable_prefix_caching": True, **engine_kwargs}
        try:
            self.llm = vllm.LLM(logprobs_mode="processed_logprobs", **kwargs)
        except TypeError:  # an older vLLM without logprobs_mode
            self.llm = vllm.LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.name = name or model
        self.version = 0
        self.max_context = int(self.llm.llm_engine.model_config.max_model_len)
        self.capabilities = Capabilities()

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        """One completion per prompt, in order (vLLM batches and schedules them itself)."""
        from vllm.inputs import TokensPrompt

        params = self._vllm.SamplingParams(
            n=1,
            max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k else -1,
            stop=list(sampling.stop) or None,
            stop_token_ids=list(sampling.stop_token_ids) if sampling.stop_token_ids is not None else None,
            include_stop_str_in_output=True,
            seed=sampling.seed,
            logprobs=0,
        )
        requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        completions = []
        for output in outputs:
            sample = output.outputs[0]
            ids = list(sample.token_ids)
            logprobs = None
            if sample.logprobs is not None:
                logprobs = [float(step[token].logprob) for step, token in zip(sample.logprobs, ids, strict=True)]
            reason = "length" if sample.finish_reason == "length" else "stop"
            completions.append(Completion(ids, logprobs, reason, text=sample.text))  # type: ignore[arg-type]
        return completions

    def load_weights(self, state_dict: dict[str, Any], version: int | None = None) -> None:
        """Push new weights into the in-process engine and bump ``version``."""
        engine = self.llm.llm_engine
        try:
            model = engine.model_executor.driver_worker.worker.model_runner.model
        except AttributeError:
            raise PolicyError(
                "cannot reach the vLLM model in this process; run with VLLM_ENABLE_V1_MULTIPROCESSING=0"
            ) from None
        model.load_weights(weights=list(state_dict.items()))
        self.llm.reset_prefix_cache()
        self.version = self.version + 1 if version is None else int(version)
