"""Hugging Face transformers backend: batched sampling with exact per-token logprobs and entropies.

Why our own decoding loop instead of ``model.generate``: the rollout needs, for every sampled
token, its behaviour log-probability and (for EMPG/EPO) the entropy of the sampling distribution,
computed once, on the device, while sampling; ``generate(output_logits=True)`` would keep every
``[B, V]`` logits tensor until the end instead. The loop is the fast path of ``generate``:

* one prefill over the left-padded batch, then one forward of ``[B, 1]`` per new token;
* a ``StaticCache`` (preallocated KV, fixed shapes) on CUDA, the cache that made ``generate``
  3.5x faster in the measurement quoted in the issue; ``compile=True`` additionally wraps the decode
  forward in ``torch.compile`` (fixed shapes make that pay off); a ``DynamicCache`` on the CPU;
* per token only one small device-to-host copy (the sampled ids), needed anyway for stop strings.

Constrained decoding: ``generate(..., choices=...)`` gives each prompt a list of allowed
completions (token-id sequences); the row then samples only tokens that keep its completion a prefix
of one of them and stops when it equals one. The token is drawn from ``q``, the model's distribution
restricted to the allowed tokens and renormalised, and what is recorded is ``log q`` and ``H(q)``
with the allowed set of every token (``Completion.allowed``): the learner recomputes ``q`` over the
same sets, so its ratios are exact (training ``log p`` instead would add an ``E[A grad log Z]`` term
and let EMPG/EPO read probability leaked outside the allowed set as uncertainty). A token that was
the only one allowed has ``log q = 0`` and gets ``loss_mask`` 0: it carries no gradient.
Top-k / top-p sampling likewise records the log-probs of the truncated, renormalised distribution.

Seeding: a ``torch.Generator`` per call when ``SamplingParams.seed`` is set (same seed, same
prompts, same batch => same completions), else the policy's own running generator.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from agentrl.policies.base import Capabilities, Completion, PolicyError, SamplingParams


def load_model_and_tokenizer(path: str, *, device: str, dtype: Any = None, revision: str | None = None):
    """Load a model and its tokenizer from a local directory or a Hugging Face Hub id.

    ``path`` follows :func:`agentrl.policies.sources.model_source` (a Hub id goes through
    huggingface_hub's cache and honours ``HF_HUB_OFFLINE``); ``revision`` pins a Hub commit. A model
    that cannot be found or loaded is one clear :class:`PolicyError`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentrl.policies.sources import load_pretrained

    tokenizer = load_pretrained(AutoTokenizer, path, revision=revision)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model = load_pretrained(AutoModelForCausalLM, path, revision=revision, **kwargs).to(device)
    model.eval()
    return model, tokenizer


class HFPolicy:
    """A transformers causal LM as a :class:`~agentrl.policies.base.Policy`.

    ``model`` is a local directory, a Hugging Face Hub id (``ORG/NAME``, pinned to a commit by
    ``revision``) or an already-built ``PreTrainedModel`` (then pass ``tokenizer``).
    ``max_batch_size`` splits large requests into chunks (memory bound on the GPU).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        device: str | None = None,
        dtype: Any = None,
        static_cache: bool | None = None,
        compile: bool = False,
        max_batch_size: int | None = None,
        seed: int = 0,
        name: str | None = None,
        revision: str | None = None,
    ):
        import torch

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if isinstance(model, str | os.PathLike):
            self.name = name or str(model)
            self.model, loaded_tokenizer = load_model_and_tokenizer(str(model), device=device, dtype=dtype, revision=revision)
            tokenizer = tokenizer or loaded_tokenizer
        else:
            self.name = name or type(model).__name__
            self.model = model.to(device)
        if tokenizer is None:
            raise ValueError("HFPolicy needs a tokenizer when given a model object")
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.static_cache = (self.device.type == "cuda") if static_cache is None else static_cache
        self.max_batch_size = max_batch_size
        self.version = 0
        self._adapter: tuple[Any, dict[str, Any]] | None = None  # (PEFT wrapper, adapter config) once load_adapter ran
        self._generator = torch.Generator(device=self.device).manual_seed(seed)
        self._decode_forward = torch.compile(self.model.forward, dynamic=False) if compile else self.model.forward
        self.pad_id = self._pad_id()
        self.eos_ids = self._eos_ids()

    def reseed(self, seed: int) -> None:
        """Restart the running sampling generator from ``seed``.

        A resumable run reseeds before each phase (an iteration's rollouts, an evaluation), so what a
        phase samples depends only on the seed and the weights, not on what was sampled before it.
        """
        self._generator.manual_seed(int(seed))

    # -- weights ------------------------------------------------------------------------------

    def load_weights(self, state_dict: dict[str, Any], version: int | None = None) -> None:
        """Take new full weights from a learner; ``version`` (default: +1) is recorded on later rollouts."""
        if self._adapter is not None:
            raise PolicyError("this policy runs LoRA adapters on its base model; load adapters, not full weights")
        expected = self.model.state_dict()
        missing, unexpected = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
        wrong = [k for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
        if missing or unexpected or wrong:  # checked before any copy: a refused update leaves the old weights whole
            raise PolicyError(f"weights do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}, "
                              f"wrong shape {wrong[:3]}")  # fmt: skip
        self.model.load_state_dict(state_dict, strict=True)
        self.version = self.version + 1 if version is None else int(version)

    def load_adapter(self, tensors: dict[str, Any], adapter_config: dict[str, Any], version: int | None = None) -> None:
        """Run LoRA adapters (PEFT's saved format) on the base model; later calls replace the adapter weights.

        ``tensors`` are keyed as in PEFT's ``adapter_model.safetensors`` and ``adapter_config`` is its
        ``adapter_config.json``. The first call injects the adapter layers into ``self.model`` with
        PEFT (in place, so generation code keeps calling the same model); every call then copies the
        adapter weights in, strictly (a missing or unknown adapter tensor is an error). The adapters
        stay unmerged, so the base weights are never rewritten and repeated updates cannot drift.
        """
        import peft
        from peft.utils import set_peft_model_state_dict

        config = {k: v for k, v in adapter_config.items() if k not in _ADAPTER_CONFIG_IGNORED}
        if self._adapter is None:
            peft_config = peft.PeftConfig.from_peft_type(**{**adapter_config, "inference_mode": True})
            self._adapter = (peft.PeftModel(self.model, peft_config), config)  # injects the layers into self.model
        wrapper, applied = self._adapter
        if config != applied:
            changed = sorted(k for k in set(config) | set(applied) if config.get(k) != applied.get(k))
            raise PolicyError(f"adapter configuration changed between versions ({', '.join(changed)}); restart the policy")
        expected = {k for k in wrapper.state_dict() if "lora_" in k}
        result = set_peft_model_state_dict(wrapper, tensors)
        missing = sorted(expected & set(result.missing_keys))
        if result.unexpected_keys or missing:
            raise PolicyError(
                f"adapter does not fit the model: unexpected {list(result.unexpected_keys)[:3]}, missing {missing[:3]}"
            )
        self.model.eval()
        self.version = self.version + 1 if version is None else int(version)

    def load_published(self, path: str | os.PathLike[str], version: int | None = None) -> None:
        """Run the version a learner published in directory ``path`` (:mod:`agentrl.policies.published`):
        full weights through :meth:`load_weights`, LoRA adapters through :meth:`load_adapter`."""
        from agentrl.policies.published import read_version

        published = read_version(path, version)
        if published.is_adapter:
            self.load_adapter(published.tensors, published.adapter_config, published.version)
        else:
            self.load_weights(published.tensors, published.version)

    # -- generation -----------------------------------------------------------------------------

    capabilities = Capabilities(entropies=True, constrained=True, weight_updates=True)

    def generate(
        self,
        prompts: list[list[int]],
        sampling: SamplingParams,
        *,
        choices: list[list[list[int]] | None] | None = None,
        seeds: list[int | None] | None = None,
        on_token: Callable[[int, int], None] | None = None,
    ) -> list[Completion]:
        """One completion per prompt (see :class:`~agentrl.policies.base.Policy`).

        ``choices[i]``, when given and not empty, lists the completions prompt ``i`` may produce
        (token-id sequences, none a prefix of another): decoding is restricted to them (see the
        module docstring). ``None`` or an empty list leaves that prompt unconstrained.

        ``seeds[i]`` gives row ``i`` its own generator (``None``: the policy's running one), so a row's
        sample does not depend on which other rows share the batch: the OpenAI-compatible server
        batches concurrent requests and still answers a seeded request as if it had run alone.
        ``sampling.seed`` is then ignored. ``on_token(i, token_id)`` is called for each token as row
        ``i`` samples it (streaming), from the calling thread.
        """
        import torch

        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        if choices is not None and len(choices) != len(prompts):
            raise ValueError(f"choices must have one entry per prompt: {len(choices)} for {len(prompts)} prompts")
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"seeds must have one entry per prompt: {len(seeds)} for {len(prompts)} prompts")
        generator: Any = self._generator
        if seeds is not None:
            generator = [
                self._generator if seed is None else torch.Generator(device=self.device).manual_seed(int(seed))
                for seed in seeds
            ]
        elif sampling.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(int(sampling.seed))
        chunk = self.max_batch_size or len(prompts)
        out: list[Completion] = []
        for start in range(0, len(prompts), chunk):
            constraint = None
            if choices is not None:
                constraint = ChoiceConstraint(choices[start : start + chunk], max_tokens=sampling.max_new_tokens)
            rows = generator[start : start + chunk] if isinstance(generator, list) else generator
            callback = None
            if on_token is not None:
                callback = (lambda offset: (lambda row, token: on_token(offset + row, token)))(start)
            out.extend(self._generate_batch(prompts[start : start + chunk], sampling, rows, constraint, callback))
        return out

    @property
    def max_context(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 1 << 30))

    def _generate_batch(
        self, prompts: list[list[int]], sampling: SamplingParams, generator, constraint: ChoiceConstraint | None = None,
        on_token: Callable[[int, int], None] | None = None,
    ) -> list[Completion]:
        import torch

        batch, width = len(prompts), max(len(p) for p in prompts)
        max_new = sampling.max_new_tokens
        if width + max_new > self.max_context:
            raise ValueError(f"prompt of {width} tokens + {max_new} new tokens exceeds the model context {self.max_context}")
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((batch, width), dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding: every row ends at the same column
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention[row, width - len(prompt) :] = 1
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        cache = self._new_cache(batch, width + max_new)
        stop_ids = torch.tensor(
            list(sampling.stop_token_ids if sampling.stop_token_ids is not None else self.eos_ids) or [-1],
            device=self.device,
        )
        # Attention mask over the whole cache. With a static cache it keeps one shape for the whole run
        # (future slots are 0 until their token is appended), so a compiled decode step never recompiles.
        full_mask = torch.cat([attention, torch.zeros((batch, max_new), dtype=torch.long, device=self.device)], 1)

        logprobs = torch.zeros((batch, max_new), dtype=torch.float32, device=self.device)
        entropies = torch.zeros((batch, max_new), dtype=torch.float32, device=self.device)
        top_k = sampling.top_logprobs
        top_values = torch.zeros((batch, max_new, top_k), dtype=torch.float32, device=self.device) if top_k else None
        top_ids = torch.zeros((batch, max_new, top_k), dtype=torch.long, device=self.device) if top_k else None
        done = torch.zeros(batch, dtype=torch.bool, device=self.device)
        lengths = [0] * batch
        reasons = ["length"] * batch
        host_done = [False] * batch
        stop_strings = [s for s in sampling.stop if s]
        tail_tokens = max((len(s) for s in stop_strings), default=0) + 4
        candidates = self._stop_candidates(stop_strings)
        host_sampled: list[list[int]] = [[] for _ in range(batch)]
        host_free: list[list[int]] = [[] for _ in range(batch)]  # constrained decoding: 1 = the token was a choice
        host_allowed: list[list[list[int] | None]] = [[] for _ in range(batch)]  # constrained decoding: allowed ids

        with torch.inference_mode():
            logits = self.model(
                input_ids=input_ids, attention_mask=attention, position_ids=positions, cache=cache,
                use_cache=True, logits_to_keep=1,
            ).logits[:, -1]
            last_pos = positions[:, -1]
            for step in range(max_new):
                allowed = None
                if constraint is not None:
                    allowed, allowed_ids = constraint.mask(host_sampled, host_done, logits.shape[-1])
                    for row, free in enumerate((allowed.sum(-1) > 1).tolist()):
                        if not host_done[row]:
                            host_free[row].append(int(free))
                            host_allowed[row].append(allowed_ids[row])
                    allowed = allowed.to(self.device)
                token, token_logprob, entropy, logp = _sample(logits, sampling, generator, allowed, return_logp=True)
                token = torch.where(done, torch.full_like(token, self.pad_id), token)
                logprobs[:, step] = token_logprob
                entropies[:, step] = entropy
                if top_k:
                    top_values[:, step], top_ids[:, step] = torch.topk(logp, min(top_k, logp.shape[-1]), dim=-1)
                hit_eos = torch.isin(token, stop_ids) & ~done
                done = done | hit_eos
                # Stop strings are only looked for after a token that can complete one.
                maybe_stop = torch.isin(token, candidates) if candidates is not None else torch.ones_like(hit_eos)
                host_tokens, host_eos, host_maybe = torch.stack([token, hit_eos.long(), maybe_stop.long()]).tolist()
                for row in range(batch):  # the stack above is the one device-to-host copy per token
                    if host_done[row]:
                        continue
                    lengths[row] = step + 1
                    host_sampled[row].append(host_tokens[row])
                    if on_token is not None:
                        on_token(row, host_tokens[row])
                    if host_eos[row]:
                        host_done[row], reasons[row] = True, "stop"
                    elif constraint is not None and constraint.complete(row, host_sampled[row]):
                        host_done[row], reasons[row] = True, "stop"
                        done[row] = True
                    elif stop_strings and host_maybe[row]:
                        tail = host_sampled[row][-tail_tokens:]
                        if any(s in self.tokenizer.decode(tail) for s in stop_strings):
                            host_done[row], reasons[row] = True, "stop"
                            done[row] = True
                if all(host_done) or step == max_new - 1:
                    break
                last_pos = last_pos + 1
                full_mask[:, width + step] = 1
                logits = self._decode_forward(
                    input_ids=token[:, None],
                    attention_mask=full_mask if self.static_cache else full_mask[:, : width + step + 1],
                    position_ids=last_pos[:, None],
                    cache=cache,
                    use_cache=True,
                ).logits[:, -1]
        sampled_host, logprob_host = host_sampled, logprobs.tolist()
        entropy_host = entropies.tolist() if sampling.return_entropies else None
        top_host = None
        if top_k:
            top_host = [
                [list(zip(ids, values, strict=True)) for ids, values in zip(row_ids, row_values, strict=True)]
                for row_ids, row_values in zip(top_ids.tolist(), top_values.tolist(), strict=True)
            ]
        return [
            Completion(
                token_ids=sampled_host[row][: lengths[row]],
                logprobs=logprob_host[row][: lengths[row]],
                finish_reason=reasons[row],  # type: ignore[arg-type]
                entropies=entropy_host[row][: lengths[row]] if entropy_host is not None else None,
                loss_mask=host_free[row][: lengths[row]] if constraint is not None else None,
                allowed=host_allowed[row][: lengths[row]] if constraint is not None else None,
                top_logprobs=top_host[row][: lengths[row]] if top_host is not None else None,
            )
            for row in range(batch)
        ]

    def _stop_candidates(self, stop_strings: list[str]):
        """Ids of tokens whose text holds the last character of a stop string (None: check every token).

        Only for ASCII last characters: a byte-level token never splits an ASCII character, so a
        stop string can only be completed by a token that contains its last character.
        """
        import torch

        if not stop_strings or not all(s[-1].isascii() for s in stop_strings):
            return None
        last = frozenset(s[-1] for s in stop_strings)
        cache = self.__dict__.setdefault("_candidate_cache", {})
        if last not in cache:
            if "_vocab_text" not in self.__dict__:
                vocab = getattr(self.model.config, "vocab_size", len(self.tokenizer))
                self._vocab_text = self.tokenizer.batch_decode([[i] for i in range(vocab)])
            ids = [i for i, text in enumerate(self._vocab_text) if any(c in text for c in last)]
            cache[last] = torch.tensor(ids or [-1], dtype=torch.long, device=self.device)
        return cache[last]

    def _new_cache(self, batch: int, length: int):
        from transformers import DynamicCache, StaticCache

        if self.static_cache:
            return StaticCache(config=self.model.config, max_cache_len=length)
        return DynamicCache(config=self.model.config)

    def _pad_id(self) -> int:
        for candidate in (self.tokenizer.pad_token_id, getattr(self.model.config, "pad_token_id", None), self.tokenizer.eos_token_id):
            if candidate is not None:
                return int(candidate)
        return 0

    def _eos_ids(self) -> tuple[int, ...]:
        ids: list[int] = []
        sources = [self.tokenizer.eos_token_id, getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)]
        for source in sources:
            for value in source if isinstance(source, list | tuple) else [source]:
                if value is not None and int(value) not in ids:
                    ids.append(int(value))
        return tuple(ids)


#: adapter_config.json fields that describe where an adapter came from, not what it computes.
_ADAPTER_CONFIG_IGNORED = frozenset({"base_model_name_or_path", "revision", "inference_mode"})


class ChoiceConstraint:
    """Per-row allowed completions for constrained decoding: which tokens may come next, and when a row is done.

    A row with ``None`` or no choices is unconstrained. Choices should be prefix-free: a row stops
    as soon as its sampled ids equal one of them. Choices longer than ``max_tokens`` (the generation
    budget) are left out, since they could only end truncated; a row whose choices are all too long
    keeps them all.
    """

    def __init__(self, choices: list[list[list[int]] | None], max_tokens: int | None = None):
        self.choices = []
        for row in choices:
            options = [list(c) for c in row or [] if c]
            fitting = [c for c in options if max_tokens is None or len(c) <= max_tokens]
            self.choices.append(fitting or options or None)

    def allowed(self, row: int, prefix: list[int]) -> list[int] | None:
        """Token ids that keep ``prefix`` on the way to one of the row's choices (``None``: any)."""
        options = self.choices[row]
        if options is None:
            return None
        n = len(prefix)
        return sorted({c[n] for c in options if len(c) > n and c[:n] == prefix}) or None

    def complete(self, row: int, prefix: list[int]) -> bool:
        options = self.choices[row]
        return options is not None and any(c == prefix for c in options)

    def mask(self, prefixes: list[list[int]], finished: list[bool], vocab: int):
        """``([B, V] bool on the CPU, allowed ids per row)``: True where a token may be sampled (all True,
        and ``None`` ids, for unconstrained or finished rows)."""
        import torch

        mask = torch.ones((len(prefixes), vocab), dtype=torch.bool)
        rows: list[list[int] | None] = []
        for row, prefix in enumerate(prefixes):
            ids = None if finished[row] else self.allowed(row, prefix)
            rows.append(ids)
            if ids is not None:
                mask[row] = False
                mask[row, ids] = True
        return mask, rows


def _sample(logits, sampling: SamplingParams, generator, allowed=None, *, return_logp: bool = False):
    """Sample one token per row. Returns ``(token [B], logprob [B], entropy [B])``, plus ``logp [B, V]`` with ``return_logp``.

    ``logprob`` and ``entropy`` are those of the distribution the token was drawn from: the model's
    ``softmax(logits / T)`` (T = 1 when greedy), restricted to the ``allowed`` tokens and renormalised
    where constrained decoding applies (``allowed``: a ``[B, V]`` bool mask; rows that allow every
    token are the model's distribution unchanged), then truncated to the top-k / nucleus and
    renormalised where those apply. That is the distribution a learner must recompute for its ratios
    to be exact. ``logp`` is the model's tempered, unrestricted distribution (for ``top_logprobs``).
    ``generator`` is one generator for the batch or a list with one per row.
    """
    import torch

    logits = logits.float()
    temperature = sampling.temperature if sampling.temperature > 0 else 1.0
    logp = torch.log_softmax(logits / temperature, dim=-1)  # [B, V] the model's distribution p
    dist = logp
    if allowed is not None:  # q = p restricted to the allowed tokens, renormalised
        constrained = ~allowed.all(-1, keepdim=True)  # [B, 1]
        dist = torch.where(constrained, torch.log_softmax(logp.masked_fill(~allowed, float("-inf")), dim=-1), logp)
    if sampling.temperature == 0:
        token = dist.argmax(-1)
    else:
        if sampling.top_k or sampling.top_p < 1.0:
            dist = _truncate(dist, sampling.top_k, sampling.top_p)
        probs = dist.exp()
        if isinstance(generator, list):
            token = torch.cat([torch.multinomial(probs[row : row + 1], 1, generator=g) for row, g in enumerate(generator)])
        else:
            token = torch.multinomial(probs, 1, generator=generator)
        token = token.squeeze(-1)
    chosen = dist.gather(-1, token[:, None]).squeeze(-1)
    entropy = -(dist.exp() * dist.masked_fill(dist == float("-inf"), 0.0)).sum(-1)  # [B]; no 0 * -inf
    return (token, chosen, entropy, logp) if return_logp else (token, chosen, entropy)


def _truncate(logp, top_k: int, top_p: float):
    """``logp [B, V]`` truncated to its ``top_k`` most likely tokens and then its nucleus of mass ``top_p``
    (the most likely token always stays), renormalised: the distribution actually sampled from."""
    import torch

    filtered = logp
    if top_k:
        kth = torch.topk(filtered, min(top_k, filtered.shape[-1]), dim=-1).values[:, -1:]
        filtered = filtered.masked_fill(filtered < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logp, order = torch.sort(filtered, descending=True, dim=-1)
        cumulative = sorted_logp.exp().cumsum(-1)
        drop_sorted = (cumulative - sorted_logp.exp()) >= top_p  # keep the first token always
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        filtered = filtered.masked_fill(drop, float("-inf"))
    return torch.log_softmax(filtered, dim=-1)


def timed_generate(policy, prompts: list[list[int]], sampling: SamplingParams) -> tuple[list[Completion], float]:
    """``policy.generate`` plus its wall time in seconds."""
    start = time.perf_counter()
    completions = policy.generate(prompts, sampling)
    return completions, time.perf_counter() - start
