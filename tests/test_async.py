"""Weight publishing between the learner and rollout workers (no Ray needed): versions, atomicity, pruning."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from agentrl.distributed.weights import WeightPublisher, latest_version, load_latest  # noqa: E402


def state(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 3), value), "b": torch.tensor([value])}


def test_workers_see_only_newer_versions_and_old_ones_are_pruned(tmp_path):
    publisher = WeightPublisher(tmp_path, keep=2)
    assert latest_version(tmp_path) is None and load_latest(tmp_path) is None  # nothing published yet
    for version in range(4):
        publisher.publish(state(float(version)), version)
    assert latest_version(tmp_path) == 3
    assert publisher.versions() == [2, 3]  # keep=2 newest
    version, weights = load_latest(tmp_path, newer_than=1)
    assert version == 3 and torch.equal(weights["w"], torch.full((2, 3), 3.0))
    assert load_latest(tmp_path, newer_than=3) is None  # a worker already on v3 loads nothing


def test_a_crash_mid_publish_leaves_the_previous_version_in_force(tmp_path):
    publisher = WeightPublisher(tmp_path)
    publisher.publish(state(1.0), 1)
    (tmp_path / "v2.pt.tmp").write_bytes(b"half a file")  # what a killed publisher leaves behind
    (tmp_path / "LATEST.tmp").write_text("2\n")
    version, weights = load_latest(tmp_path)
    assert version == 1 and weights["b"].item() == 1.0
    assert publisher.versions() == [1]


def test_published_tensors_load_without_autograd_state(tmp_path):
    WeightPublisher(tmp_path).publish({"w": torch.ones(2, requires_grad=True) * 2}, 5)
    version, weights = load_latest(tmp_path)
    assert version == 5 and torch.equal(weights["w"], torch.full((2,), 2.0)) and not weights["w"].requires_grad
    with pytest.raises(ValueError, match="keep must be >= 1"):
        WeightPublisher(tmp_path, keep=0)
