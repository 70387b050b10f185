"""vLLM backend (optional extra ``agentrl[vllm]``, GPU only), written against vLLM's documented offline API.

Generation: ``vllm.LLM.generate(prompts, sampling_params)`` where each prompt is a
``TokensPrompt(prompt_token_ids=...)``: the ids we built go in verbatim and vLLM never tokenises the
prompt. ``SamplingParams(logprobs=0)`` returns the log-probability of each sampled token
(``CompletionOutput.logprobs[i][token_ids[i]].logprob``); the engine is built with
``logprobs_mode="processed_logprobs"`` where the installed vLLM has it, so the logprobs are those of
the temperature-scaled distribution, as in the other backends (with top-p/top-k below 1/unlimited,
vLLM's "processed" distribution is also truncated: the learner's exactness check reports the gap).
vLLM does not expose the entropy of the sampling distribution: ``entropies`` is ``None`` (learners
recompute entropies from the ids).

Weight sync, through vLLM's documented RL hooks only (no reaching into engine internals):

* full weights: the engine is built with ``worker_extension_cls`` =
  :class:`agentrl.policies.vllm_worker.WeightSyncExtension`, and :meth:`VLLMPolicy.load_published`
  calls ``llm.collective_rpc("agentrl_load_weights", kwargs={"path": ...})``: every worker reads the
  published ``model.safetensors`` and passes it to its model's ``load_weights``; then
  ``llm.reset_prefix_cache()`` (cached KV came from the old weights);
* LoRA adapters: the engine is built with ``enable_lora=True``; each published adapter directory
  becomes a ``LoRARequest`` with a new id (vLLM caches adapters by id, so a new version is never served
  from the cache of an old one), passed to every later ``generate``;
* colocated with the learner on one GPU (``sleep_mode=True``, the engine's ``enable_sleep_mode``):
  :meth:`sleep` before the learner's update offloads the weights to CPU memory and frees the KV cache
  (``llm.sleep(level=1)``), :meth:`wake_up` brings them back (``llm.wake_up()``) before the new
  version is loaded. Level 1 keeps the base weights, which LoRA needs and which makes waking up exact.

Works with the engine in its own process (vLLM's default): nothing here touches engine internals.
"""

from __future__ import annotations

import os
from typing import Any

from agentrl.policies.base import Capabilities, Completion, PolicyError, SamplingParams

WORKER_EXTENSION = "agentrl.policies.vllm_worker.WeightSyncExtension"


class VLLMPolicy:
    """A vLLM engine as a :class:`~agentrl.policies.base.Policy`. Extra kwargs go to ``vllm.LLM``.

    ``model`` is a local model directory or a Hugging Face Hub id, checked by
    :func:`~agentrl.policies.sources.model_source` (vLLM reads Hub ids through the same
    huggingface_hub cache and honours ``HF_HUB_OFFLINE``). ``enable_lora`` (with ``max_lora_rank`` at
    least the learner's LoRA rank) lets it run published adapters; ``sleep_mode`` lets it free the GPU
    for a learner on the same device.
    """

    def __init__(
        self,
        model: str,
        *,
        seed: int = 0,
        name: str | None = None,
        revision: str | None = None,
        sleep_mode: bool = False,
        enable_lora: bool = False,
        max_lora_rank: int = 16,
        **engine_kwargs: Any,
    ):
        try:
            import vllm
        except ImportError as exc:
            raise PolicyError(f"vLLM is not importable ({exc})", hint="install it with pip install 'agentrl[vllm]' "
                              "on a machine with a CUDA GPU") from None  # fmt: skip
        from agentrl.policies.sources import model_source

        model = model_source(model)
        self._vllm = vllm
        kwargs: dict[str, Any] = {"model": model, "seed": seed, "enable_prefix_caching": True,
                                  "worker_extension_cls": WORKER_EXTENSION, "enable_sleep_mode": sleep_mode}  # fmt: skip
        if revision is not None:
            kwargs["revision"] = revision
        if enable_lora:
            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
        kwargs.update(engine_kwargs)
        try:
            self.llm = vllm.LLM(logprobs_mode="processed_logprobs", **kwargs)
        except TypeError as exc:  # an older vLLM without logprobs_mode
            if "logprobs_mode" not in str(exc):
                raise
            self.llm = vllm.LLM(**kwargs)
        self.tokenizer = None if kwargs.get("skip_tokenizer_init") else self.llm.get_tokenizer()  # ids in, ids out
        self.name = name or model
        self.version = 0
        self.sleep_mode = sleep_mode
        self.lora_enabled = enable_lora
        self._lora: Any = None  # the LoRARequest of the adapter version being served
        self._asleep = False
        config = getattr(self.llm.llm_engine, "model_config", None)
        self.max_context = int(config.max_model_len) if config is not None else None
        self.capabilities = Capabilities(weight_updates=True)

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        """One completion per prompt, in order (vLLM batches and schedules them itself)."""
        from vllm.inputs import TokensPrompt

        if self._asleep:
            raise PolicyError("the vLLM engine is asleep (the learner is updating); wake_up() first")
        params = self._vllm.SamplingParams(
            n=1,
            max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k else -1,
            stop=list(sampling.stop) or None,
            stop_token_ids=list(sampling.stop_token_ids) if sampling.stop_token_ids is not None else None,
            ignore_eos=sampling.stop_token_ids is not None,  # given stop ids replace the end-of-sequence ids
            include_stop_str_in_output=True,
            detokenize=self.tokenizer is not None,
            seed=sampling.seed,
            logprobs=0,
        )
        requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False, lora_request=self._lora)
        completions = []
        for output in outputs:
            sample = output.outputs[0]
            ids = list(sample.token_ids)
            logprobs = None
            if sample.logprobs is not None:
                logprobs = [float(step[token].logprob) for step, token in zip(sample.logprobs, ids, strict=True)]
            reason = "length" if sample.finish_reason == "length" else "stop"
            completions.append(Completion(ids, logprobs, reason, text=sample.text or None))  # type: ignore[arg-type]
        return completions

    # -- weight sync ----------------------------------------------------------------------------

    def load_published(self, path: str | os.PathLike[str], version: int) -> None:
        """Run the version a learner published in directory ``path`` (full weights or a LoRA adapter)."""
        from agentrl.policies.published import is_adapter_dir
        from agentrl.policies.vllm_worker import LOAD_METHOD

        directory, version = str(os.path.abspath(path)), int(version)
        if self._asleep:
            self.wake_up()
        if is_adapter_dir(directory):
            if not self.lora_enabled:
                raise PolicyError(f"{directory} holds LoRA adapters but this vLLM engine was built without enable_lora")
            from vllm.lora.request import LoRARequest

            self._lora = LoRARequest(f"agentrl-lora-v{version}", version + 1, directory)  # ids start at 1
        else:
            if self._lora is not None:
                raise PolicyError("this engine runs LoRA adapters on its base model; publish adapters, not full weights")
            results = self.llm.collective_rpc(LOAD_METHOD, kwargs={"path": directory, "version": str(version)})
            if any(not isinstance(r, dict) or r.get("version") != version for r in results):
                raise PolicyError(f"vLLM workers did not all load version {version}: {str(results)[:300]}")
            self.llm.reset_prefix_cache()
        self.version = version

    def sleep(self) -> None:
        """Free the GPU for a colocated learner: weights to CPU memory, KV cache dropped (``LLM.sleep(level=1)``)."""
        if not self.sleep_mode:
            raise PolicyError("this vLLM engine was built without sleep_mode; it cannot free the GPU for the learner")
        if not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    def wake_up(self) -> None:
        """Bring the weights and KV cache back to the GPU (``LLM.wake_up()``)."""
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False
