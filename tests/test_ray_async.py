"""The asynchronous actor-learner on a local Ray cluster: two rollout workers, a learner, TextWorld.

Real parts throughout: Ray actors in their own processes, a tiny Qwen2 policy, TextWorld games,
the SQL store as the data plane and the learner's PPO update. Slow (Ray start, a model load per
worker process): the tests share one local cluster and each covers as much as one run can show.
"""

from __future__ import annotations

import os
import signal

import pytest

torch = pytest.importorskip("torch")
ray = pytest.importorskip("ray")
pytest.importorskip("textworld")

from agentrl.distributed.actor_learner import ActorLearner  # noqa: E402
from agentrl.distributed.ray_local import init_ray, shutdown_ray  # noqa: E402
from agentrl.distributed.weights import latest_version  # noqa: E402
from agentrl.distributed.worker import WorkerSpec  # noqa: E402
from agentrl.store import open_store  # noqa: E402
from agentrl.training.config import LearnerConfig, LoRAConfig  # noqa: E402
from agentrl.training.learner import Learner  # noqa: E402

TASKS = ["easy/100000", "easy/100001", "easy/100002"]


@pytest.fixture(scope="module")
def local_ray():
    started = init_ray("local", num_cpus=2)
    yield
    shutdown_ray(started)


def build(tmp_path, model_dir, *, max_staleness, workers=2, store_url=None, lora=None, **kwargs):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    learner = Learner(model, LearnerConfig(lr=1e-3, total_steps=10, lora=lora), pad_token_id=model.config.pad_token_id)
    store = open_store(store_url or f"sqlite:///{tmp_path / 'store.db'}")
    run_id = store.start_run("async-test", env_id="agentrl/TextWorld-v0", kind="train")
    spec = WorkerSpec(model=model_dir, env="textworld", store=str(store.url.render_as_string(hide_password=False)),
                      run_id=run_id, weights_dir=str(tmp_path / "weights"), split="valid", max_turns=2,
                      max_new_tokens=8, max_parallel=2)
    updates = []
    driver = ActorLearner(learner, store, spec, workers=workers, group_size=2, groups_per_update=2,
                          sample_task=lambda rng: (str(rng.choice(TASKS)), "default"), max_staleness=max_staleness,
                          worker_cpus=0.5, seed=0, on_update=updates.append, **kwargs)
    return driver, learner, store, run_id, updates


@pytest.mark.slow
def test_two_workers_a_learner_a_killed_worker_and_the_staleness_bound(local_ray, tmp_path, tiny_chat_model):
    driver, learner, store, run_id, updates = build(tmp_path, tiny_chat_model, max_staleness=1)
    killed = []

    def kill_first_worker(summary):
        updates.append(summary)
        if not killed:  # after the first update both workers have groups in flight (two queued each)
            pid = driver.worker_pids()[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    driver.on_update = kill_first_worker
    stats = driver.run(updates=3)
    assert learner.step == 3
    assert [u["policy_version"] for u in updates] == [1, 2, 3]
    for u in updates:
        assert u["episodes"] == 4  # 2 groups x group_size 2, whole groups only
        assert 0 <= u["async/max_staleness"] <= 1  # the bound held for every batch
    assert latest_version(tmp_path / "weights") == 3  # every update was published
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["LATEST", "v2", "v3"]  # keep max_staleness + 1
    episodes = store.read_episodes(run_id)
    played = [ep for ep in episodes if not ep.meta.get("discarded")]
    assert {ep.meta["worker"] for ep in played} == {0, 1}  # both actors played
    assert {ep.policy_version for ep in played} & {1, 2}, "workers never picked up published weights"
    for ep in played:  # every turn of an episode comes from one version (pick-up between groups)
        assert {s.policy_version for s in ep.steps} == {ep.policy_version}
    # the killed worker: replaced once, what it had in flight recorded as discarded, never trained on
    assert stats["restarts"] == 1
    assert stats["discarded_groups"] >= 1
    discarded = [ep for ep in episodes if ep.meta.get("discarded")]
    assert len(discarded) == 2 * stats["discarded_groups"]  # group_size episodes per lost group
    assert all(ep.error.startswith("discarded: rollout worker 0") and ep.meta["worker"] == 0 for ep in discarded)
    assert all(ep.policy_version is None and not ep.steps for ep in discarded)
    assert store.count_episodes(run_id, policy_versions=(0, 10)) == len(played)
    assert store.check_integrity() == []
    store.close()


@pytest.mark.slow
def test_synchronous_mode_is_zero_staleness(local_ray, tmp_path, tiny_chat_model):
    driver, learner, store, run_id, updates = build(tmp_path, tiny_chat_model, max_staleness=0, workers=1)
    driver.run(updates=2)
    assert [u["async/max_staleness"] for u in updates] == [0, 0]
    trained_versions = sorted(ep.policy_version for ep in store.read_episodes(run_id))
    assert trained_versions == [0] * 4 + [1] * 4  # the driver asked for exactly what each batch needed
    store.close()


@pytest.mark.slow
def test_learner_times_out_with_a_clear_message_when_no_fresh_data_arrives(local_ray, tmp_path, tiny_chat_model):
    from agentrl.distributed.actor_learner import LearnerTimeout

    # Workers play an env that cannot be built: every group fails, nothing fresh ever arrives.
    driver, learner, store, run_id, updates = build(tmp_path, tiny_chat_model, max_staleness=0, workers=1,
                                                    wait_timeout_s=3)
    driver.spec.env_args = {"difficulty": "no-such-difficulty"}
    with pytest.raises(LearnerTimeout, match=r"no fresh episodes \(policy versions 0\.\.0\) reached the learner in 3 s") as err:
        driver.run(updates=1)
    assert "last worker error: rollout worker 0 failed" in str(err.value)
    failed = store.read_episodes(run_id)
    assert failed and all(ep.error.startswith("discarded: rollout worker 0 failed") for ep in failed)
    assert learner.step == 0
    assert driver.actors == []  # cleaned up
    store.close()


FIXED_IDS = [5, 17, 42, 9, 300, 7, 1, 64, 128]


def merged_logprobs(learner) -> torch.Tensor:
    import copy

    merged = copy.deepcopy(learner.model).merge_and_unload()
    with torch.no_grad():
        return torch.log_softmax(merged(input_ids=torch.tensor([FIXED_IDS])).logits[0].float(), -1)


@pytest.mark.slow
@pytest.mark.parametrize("max_staleness", [0, 1])
def test_lora_workers_run_the_learners_merged_weights(local_ray, tmp_path, tiny_chat_model, max_staleness):
    """LoRA in async training: adapters published in PEFT's format, applied by the worker, equal to the learner's merge."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    driver, learner, store, run_id, updates = build(tmp_path, tiny_chat_model, max_staleness=max_staleness, workers=1,
                                                    lora=LoRAConfig(r=4, alpha=8))  # fmt: skip
    with torch.no_grad():  # non-zero adapters from the start (B = 0 would make every comparison below vacuous)
        for name, param in learner.model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.05)
    with torch.no_grad():
        base = torch.log_softmax(
            AutoModelForCausalLM.from_pretrained(tiny_chat_model)(input_ids=torch.tensor([FIXED_IDS])).logits[0], -1
        )
    checks = []

    def check_worker(summary):
        updates.append(summary)
        actor = driver.actors[0]
        assert ray.get(actor.refresh.remote(), timeout=300) == learner.step  # picked up the version just published
        worker = torch.tensor(ray.get(actor.next_token_logprobs.remote(FIXED_IDS), timeout=300))
        expected = merged_logprobs(learner)
        checks.append((learner.step, (worker - expected).abs().max().item(), (expected - base).abs().max().item()))

    driver.on_update = check_worker
    driver.run(updates=2)
    assert [c[0] for c in checks] == [1, 2]
    for step, worker_error, adapter_effect in checks:
        assert worker_error < 1e-5, (step, worker_error)  # the worker computes the learner's merged policy
        assert adapter_effect > 1e-2, (step, adapter_effect)  # and that policy is not the base model's
    played = store.read_episodes(run_id)
    assert {ep.policy_version for ep in played} >= {0, 1}  # episodes were played with published adapters
    weights_dir = tmp_path / "weights"
    assert sorted(p.name for p in weights_dir.iterdir()) == ["LATEST", *[f"v{v}" for v in range(2 - max_staleness, 3)]]
    assert sorted(p.name for p in (weights_dir / "v2").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_chat_model), weights_dir / "v2")
    with torch.no_grad():
        via_peft = torch.log_softmax(peft_model(input_ids=torch.tensor([FIXED_IDS])).logits[0].float(), -1)
    torch.testing.assert_close(via_peft, merged_logprobs(learner), atol=1e-5, rtol=0)
    store.close()
