"""`agentrl serve` checked with the official ``openai`` client against a real server on 127.0.0.1.

Expected values come from the local model itself (HFPolicy with the same per-row seeds, or a plain
forward pass for top log-probs), from hand rules (the text before the stop string) or from the
OpenAI API reference (status codes, error codes, response shapes).
"""

from __future__ import annotations

import threading

import pytest

torch = pytest.importorskip("torch")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from agentrl.policies import SamplingParams  # noqa: E402
from agentrl.policies.hf import HFPolicy  # noqa: E402
from agentrl.policies.server import PolicyServer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Open the fridge."}]


@pytest.fixture(scope="module")
def local(tiny_chat_model):
    return HFPolicy(tiny_chat_model, device="cpu")


@pytest.fixture(scope="module")
def server(tiny_chat_model):
    with PolicyServer(HFPolicy(tiny_chat_model, device="cpu"), model_name="tiny", api_key="sekrit", max_wait_s=0.05) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="sekrit", max_retries=0)


def chat_prompt(local) -> list[int]:
    text = local.tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    return local.tokenizer(text, add_special_tokens=False)["input_ids"]


def visible(local, ids: list[int]) -> str:
    content = ids[:-1] if ids and ids[-1] in local.eos_ids else ids
    return local.tokenizer.decode(content, skip_special_tokens=True)


def test_models_list_and_retrieve(client, server):
    (card,) = client.models.list().data
    assert card.id == "tiny" and card.object == "model" and isinstance(card.created, int) and card.created > 1.7e9
    again = client.models.retrieve("tiny")
    assert again.id == "tiny" and again.created == card.created and again.model_extra["max_model_len"] == 4096
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("gpt-17")
    assert err.value.code == "model_not_found"


def test_chat_n_seed_and_token_ids_equal_local_per_row_seeds(client, local):
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, n=3, max_tokens=8, seed=11, temperature=1.0)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    prompt = chat_prompt(local)
    expected = local.generate([prompt] * 3, SamplingParams(max_new_tokens=8), seeds=[11, 12, 13])
    for choice, want in zip(reply.choices, expected, strict=True):
        assert choice.model_extra["token_ids"] == want.token_ids
        assert choice.message.content == visible(local, want.token_ids)
        assert choice.finish_reason == ("length" if want.finish_reason == "length" else "stop")
    assert reply.model_extra["prompt_token_ids"] == prompt
    assert len({tuple(c.model_extra["token_ids"]) for c in reply.choices}) > 1  # n choices are different samples
    assert reply.usage.prompt_tokens == len(prompt)
    assert reply.usage.completion_tokens == sum(len(w.token_ids) for w in expected)
    again = client.chat.completions.create(model="tiny", messages=MESSAGES, n=3, max_tokens=8, seed=11)
    assert [c.message.content for c in again.choices] == [c.message.content for c in reply.choices]


def test_max_tokens_and_greedy(client, local):
    reply = client.completions.create(model="tiny", prompt="You see a fridge.", max_tokens=5, temperature=0)
    prompt = local.tokenizer("You see a fridge.", add_special_tokens=False)["input_ids"]
    (want,) = local.generate([prompt], SamplingParams(max_new_tokens=5, temperature=0))
    choice = reply.choices[0]
    assert choice.model_extra["token_ids"] == want.token_ids and len(want.token_ids) <= 5
    assert choice.model_extra["prompt_token_ids"] == prompt
    if want.finish_reason == "length":
        assert choice.finish_reason == "length" and reply.usage.completion_tokens == 5


def test_stop_string_is_excluded_from_the_text(client, local):
    free = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=24, seed=5)
    text = free.choices[0].message.content
    stop = next(text[i : i + 2] for i in range(2, len(text) - 1) if "\ufffd" not in text[i : i + 2] and text[i : i + 2].strip())
    cut = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=24, seed=5, stop=[stop])
    choice = cut.choices[0]
    assert choice.message.content == text[: text.find(stop)]  # OpenAI: the text ends before the stop sequence
    assert choice.finish_reason == "stop" and choice.model_extra["stop_reason"] == stop
    ids = choice.model_extra["token_ids"]  # the sampled ids verbatim: they include the stop string's tokens
    assert stop in visible(local, ids) and ids == free.choices[0].model_extra["token_ids"][: len(ids)]


def test_chat_logprobs_have_token_strings_and_top_logprobs_of_the_model(client, local):
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, seed=2, temperature=0.7,
                                           logprobs=True, top_logprobs=3)  # fmt: skip
    choice = reply.choices[0]
    ids = choice.model_extra["token_ids"]
    content = choice.logprobs.content
    assert [e.token for e in content] == [local.tokenizer.decode([t]) for t in ids]
    assert not any(e.token.startswith("token_id:") for e in content)
    prompt = chat_prompt(local)
    with torch.no_grad():  # independent reference: one forward pass, log-softmax of logits / T
        logits = local.model(torch.tensor([prompt + ids[:-1]])).logits[0, len(prompt) - 1 :].float()
    logp = torch.log_softmax(logits / 0.7, dim=-1)
    for step, entry in enumerate(content):
        assert entry.logprob == pytest.approx(logp[step, ids[step]].item(), abs=1e-4)
        values, top_ids = torch.topk(logp[step], 3)
        assert [t.token for t in entry.top_logprobs] == [local.tokenizer.decode([int(i)]) for i in top_ids]
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(values.tolist(), abs=1e-4)
        assert entry.bytes == list(entry.token.encode())


def test_completion_logprobs_and_token_id_strings(client, local):
    reply = client.completions.create(model="tiny", prompt=["You see", "Open"], max_tokens=3, seed=9, logprobs=2)
    assert len(reply.choices) == 2
    for choice in reply.choices:
        ids = choice.model_extra["token_ids"]
        assert choice.logprobs.tokens == [local.tokenizer.decode([t]) for t in ids]
        assert all(1 <= len(top) <= 2 for top in choice.logprobs.top_logprobs) and len(choice.logprobs.top_logprobs) == len(ids)
        assert choice.logprobs.text_offset[0] == 0
    as_ids = client.completions.create(model="tiny", prompt=[[5, 6, 7]], max_tokens=3, seed=9, logprobs=0,
                                       extra_body={"return_tokens_as_token_ids": True})  # fmt: skip
    choice = as_ids.choices[0]
    assert choice.logprobs.tokens == [f"token_id:{t}" for t in choice.model_extra["token_ids"]]


@pytest.mark.parametrize("stop", [None, ["e"]])
def test_streaming_yields_chunks_that_add_up_to_the_unstreamed_text(client, stop):
    kwargs = dict(model="tiny", messages=MESSAGES, n=2, max_tokens=16, seed=21, stop=stop)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert len(chunks) > 4 and all(c.object == "chat.completion.chunk" for c in chunks)
    texts, reasons = {0: "", 1: ""}, {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                reasons[choice.index] = choice.finish_reason
    assert texts == {c.index: c.message.content for c in whole.choices}
    assert reasons == {c.index: c.finish_reason for c in whole.choices}
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions_streaming(client):
    kwargs = dict(model="tiny", prompt="You see a", max_tokens=12, seed=4)
    whole = client.completions.create(**kwargs).choices[0]
    parts = [c.choices[0].text for c in client.completions.create(**kwargs, stream=True) if c.choices]
    assert len(parts) >= 2 and "".join(parts) == whole.text


def test_errors_are_openai_shaped_with_the_right_codes(client, server):
    with pytest.raises(openai.BadRequestError) as err:  # the prompt alone is longer than the context
        client.completions.create(model="tiny", prompt=[7] * 5000, max_tokens=4)
    assert err.value.code == "context_length_exceeded" and err.value.param == "prompt"
    with pytest.raises(openai.BadRequestError) as err:  # prompt + max_tokens over the context
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4090)
    assert err.value.code == "context_length_exceeded" and "maximum context length is 4096" in err.value.message
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-17", messages=MESSAGES)
    assert err.value.code == "model_not_found"
    for bad in ({"temperature": 5}, {"n": 0}, {"top_logprobs": 3}, {"max_tokens": 0}, {"presence_penalty": 1.0}):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="tiny", messages=MESSAGES, **bad)
        assert err.value.status_code == 400 and isinstance(err.value.code, str)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=[])
    with pytest.raises(openai.AuthenticationError) as err:
        openai.OpenAI(base_url=server.url, api_key="wrong", max_retries=0).models.list()
    assert err.value.code == "invalid_api_key"
    raw = httpx.post(server.url + "/chat/completions", content=b"{not json", headers={"Authorization": "Bearer sekrit",
                     "Content-Type": "application/json"})  # fmt: skip
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "invalid_json"
    missing = httpx.get(server.url + "/nowhere", headers={"Authorization": "Bearer sekrit"})
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"


def test_concurrent_clients_are_batched_and_equal_the_unbatched_results(server, client):
    """Eight clients at once: fewer generate calls than requests, same tokens as one request at a time."""
    prompts = [f"You see {word}" for word in ("a fridge", "a table", "an apple", "a door", "the north", "a key", "a box", "a chest")]
    sequential = [client.completions.create(model="tiny", prompt=p, max_tokens=10, seed=100 + i).choices[0]
                  for i, p in enumerate(prompts)]  # fmt: skip
    before = dict(server.batcher.stats)
    results: dict[int, object] = {}
    barrier = threading.Barrier(len(prompts))

    def call(i: int) -> None:
        barrier.wait()
        results[i] = client.completions.create(model="tiny", prompt=prompts[i], max_tokens=10, seed=100 + i).choices[0]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    calls = server.batcher.stats["generate_calls"] - before["generate_calls"]
    assert server.batcher.stats["jobs"] - before["jobs"] == len(prompts)
    assert calls < len(prompts), f"{len(prompts)} concurrent requests took {calls} generate calls"
    for i, want in enumerate(sequential):
        assert results[i].model_extra["token_ids"] == want.model_extra["token_ids"]
        assert results[i].text == want.text


def test_collector_ends_an_episode_whose_prompt_overflows_the_served_context(tiny_chat_model, tmp_path):
    """Turn 1 fits the served model's context, turn 2 does not: the server's 400 ends that episode as
    truncated (truncated_reason "context_length"), the run goes on and raises nothing."""
    pytest.importorskip("textworld")
    import json
    import shutil

    import agentrl
    from agentrl.agents.llm import ACTION_STOP, LLMAgent, prompt_format_for
    from agentrl.policies.openai import OpenAIPolicy
    from agentrl.rollout import Collector, ModelActor

    model_dir = tmp_path / "short-context"
    shutil.copytree(tiny_chat_model, model_dir)
    policy = HFPolicy(str(model_dir), device="cpu")
    agent = LLMAgent(policy.tokenizer, prompt_format_for("textworld"))
    env = agentrl.make("textworld", split="valid", max_turns=5)
    first = len(agent.prompt_ids(agent.start(*env.reset(seed=0, options={"task": "easy/100000"}))))
    env.close()
    config = json.loads((model_dir / "config.json").read_text())
    config["max_position_embeddings"] = first + 40  # room for turn 1 (40 new tokens), none for turn 2
    (model_dir / "config.json").write_text(json.dumps(config))
    sampling = SamplingParams(max_new_tokens=40, seed=0, stop=(ACTION_STOP,))
    with PolicyServer(HFPolicy(str(model_dir), device="cpu"), model_name="short") as srv:
        client = OpenAIPolicy(srv.url, backoff=5.0)
        with Collector(lambda: agentrl.make("textworld", split="valid", max_turns=5), ModelActor(client, agent, sampling),
                       env_id="agentrl/TextWorld-v0", max_parallel=2) as collector:  # fmt: skip
            episodes = collector.run(["easy/100000"], group_size=2)
    assert len(episodes) == 2 and client.stats["retries"] == 0 and client.stats["context_overflows"] >= 1
    for episode in episodes:
        if episode.won:  # a one-turn win never asks for a second turn
            continue
        assert episode.error is None and episode.turns == 1
        assert episode.meta["truncated_reason"] == "context_length" and episode.steps[-1].truncated
