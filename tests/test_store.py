"""Trajectory store: exact round trips, compact token blobs, selection for training, exports.

Every test that touches a database runs on SQLite and on a real PostgreSQL server (the
``store_url`` fixture in conftest.py).
"""

from __future__ import annotations

import json
import math
from array import array

import numpy as np
import pytest
import torch

from agentrl.store import StoreError, codec, export, open_store
from agentrl.store.export import episode_from_dict
from agentrl.trajectory import ALLOWED, Episode, Step, Transcript


def model_episode(task: str = "t0", *, seed: int = 0, group: str | None = "g0", won: bool = False,
                  version: int | None = 3, split: str = "train", agent: str = "policy") -> Episode:  # fmt: skip
    """A two-turn concat-layout episode: one transcript, turn 1's prompt extends turn 0's prompt + response."""
    logprobs0 = torch.tensor([-0.5, -1.25, -0.1], dtype=torch.float32).tolist()  # float32 values, as a model gives
    v0 = version
    v1 = None if version is None else version + 1
    steps = [
        Step(
            observation="You are in a kitchen.\nThere is a fridge.",
            action="open fridge",
            reward=0.0,
            info={"task_id": task, "turn": 1, "won": False, "progress": 0.5, "invalid_action": False,
                  "admissible_actions": ["open fridge", "look"]},  # fmt: skip
            env_seconds=0.003,
            generation_seconds=0.25,
            policy_version=v0,
        ),
        Step(
            observation="The fridge is open. You see an apple.",
            action="take apple",
            reward=1.0 if won else 0.0,
            terminated=won,
            truncated=not won,
            info={"task_id": task, "turn": 2, "won": won, "progress": 1.0 if won else 0.5},
            env_seconds=0.004,
            generation_seconds=0.5,
            policy_version=v1,
        ),
    ]
    transcript = Transcript(sampling={"temperature": 1.0, "top_p": 1.0, "top_k": 0})
    transcript.append_prompt([151644, 8948, 198, 2610, 525], 0)
    transcript.append_sampled([2508, 37179, 151645], 0, logprobs=logprobs0, entropies=[0.7, 1.3, 0.01], version=v0,
                              allowed=[[2508, 2509], None, [151645]])  # entropies not float32-exact  # fmt: skip
    transcript.append_prompt([785, 37179], 1)
    transcript.append_sampled([22743, 23268, 151645], 1, logprobs=[-0.2, -0.3, -0.4], entropies=[0.5, 0.25, 0.125],
                              loss_mask=[1, 1, 0], version=v1)  # fmt: skip
    return Episode(
        env_id="agentrl/TextWorld-v0", task_id=task, split=split, seed=seed, group_id=group, agent=agent,
        policy_version=version, instruction="Find the apple.", first_observation=steps[0].observation,
        steps=steps, transcripts=[transcript], won=won, progress=1.0 if won else 0.5, started_at=1_700_000_000.123456,
        finished_at=1_700_000_002.5, meta={"reset_info": {"task_id": task}, "note": "x"},
    )  # fmt: skip


# --- codecs (pure functions) ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "code", "size"),
    [
        ([0, 1, 255], "B", 1 + 3),
        ([256, 0], "H", 1 + 4),
        ([151645, 1], "i", 1 + 8),  # Qwen ids exceed uint16
        ([-100, 5], "b", 1 + 2),  # negatives skip the unsigned types
        ([-1, 300], "h", 1 + 4),
        ([-100_000, 5], "i", 1 + 8),
        ([2**40], "q", 1 + 8),
        ([], "B", 1),
    ],
)
def test_int_codec_picks_the_smallest_exact_type(values, code, size):
    blob = codec.encode_ints(values)
    assert chr(blob[0]) == code
    assert len(blob) == size
    assert codec.decode(blob) == values


def test_int_codec_rejects_what_it_cannot_store():
    with pytest.raises(codec.CodecError, match="int64"):
        codec.encode_ints([2**63])
    with pytest.raises(codec.CodecError, match="integers"):
        codec.encode_ints([1.5])
    assert codec.encode_ints(None) is None and codec.decode(None) is None


def test_float_codec_is_exact_and_uses_float32_only_when_lossless():
    exact32 = [0.5, -0.25, float(np.float32(-1.2345))]
    blob = codec.encode_floats(exact32)
    assert chr(blob[0]) == "f" and len(blob) == 1 + 4 * 3
    assert codec.decode(blob) == exact32
    not32 = [0.1, -2.0 / 3.0]
    blob = codec.encode_floats(not32)
    assert chr(blob[0]) == "d" and len(blob) == 1 + 8 * 2
    assert codec.decode(blob) == not32
    special = codec.decode(codec.encode_floats([math.inf, -0.0, math.nan]))
    assert special[0] == math.inf and math.copysign(1.0, special[1]) == -1.0 and math.isnan(special[2])


def test_blob_layout_is_little_endian_after_a_type_byte():
    # The on-disk format is documented in agentrl.store.codec; check it byte by byte.
    assert codec.encode_ints([1, 258]) == b"H" + bytes([1, 0, 2, 1])
    assert codec.encode_floats([1.0]) == b"f" + bytes([0, 0, 0x80, 0x3F])
    assert codec.decode_numpy(b"i" + bytes([0xFF, 0xFF, 0xFF, 0xFF])).tolist() == [-1]
    with pytest.raises(codec.CodecError, match="whole number"):
        codec.decode(b"i\x00\x00")
    with pytest.raises(codec.CodecError, match="type code"):
        codec.decode(b"z")


def test_prompt_delta_stores_only_the_new_ids():
    context = [5, 6, 7, 8]
    prompt = [5, 6, 7, 8, 9, 10]
    blob = codec.encode_prompt(prompt, context)
    assert blob == bytes([ord("B") | codec.DELTA_FLAG, 9, 10])
    assert codec.decode_prompt(blob, context) == prompt
    rewritten = [5, 6, 99, 8, 9]  # a template that rewrote history: stored whole, never as a delta
    assert not codec.is_delta(codec.encode_prompt(rewritten, context))
    assert codec.decode_prompt(codec.encode_prompt(rewritten, context), context) == rewritten


@pytest.mark.parametrize(
    "text",
    ["plain", "", "caf\u00e9 \U0001f600", "nul\x00inside", "lone \ud800 surrogate", "\ue000starts with the marker",
     "back\\slash\x00\\0", "\\u0041 looks escaped"],
)  # fmt: skip
def test_text_escaping_round_trips_any_string(text):
    stored = codec.escape_text(text)
    assert "\x00" not in stored
    stored.encode("utf-8")  # storable in any UTF-8 column
    assert codec.unescape_text(stored) == text
    if text in ("plain", "", "caf\u00e9 \U0001f600", "\\u0041 looks escaped"):
        assert stored == text  # ordinary strings are stored as they are


# --- round trips on both backends ----------------------------------------------------------------
def test_every_field_round_trips(store_url):
    odd = Episode(
        env_id="agentrl/TextWorld-v0", task_id="odd\x00task", seed=2**40, group_id=None, agent="",
        first_observation="lone \ud800 and nul \x00 and \ue000", instruction=None, error="RuntimeError: boom",
        steps=[Step(observation="x" * 200_000, action="\x00\x01garbage\ud83d", reward=-0.5, truncated=True,
                    info={"weird": "\x00\ud800", "nested": {"a": [1, 2.5, None, True]}, "nan": math.nan})],
        finished_at=None, meta={},
    )  # fmt: skip
    scripted = Episode(env_id="e", task_id="t", steps=[Step("o", "a")], meta={"k": 1})
    empty = Episode(env_id="e", task_id="t", steps=[])  # an env that failed on reset
    episodes = [model_episode(won=True), odd, scripted, empty]
    with open_store(store_url) as store:
        run = store.start_run("roundtrip", env_id="agentrl/TextWorld-v0", config={"lr": 1e-6}, kind="train")
        ids = [store.write_episode(run, ep) for ep in episodes]
        assert ids == sorted(ids) and len(set(ids)) == 4
        back = store.read_episodes(run)
        assert store.check_integrity() == []
        (info,) = store.runs()
    assert back[0] == episodes[0]
    assert back[2:] == episodes[2:]
    # NaN != NaN, so compare the odd episode field by field with the NaN taken out.
    assert math.isnan(back[1].steps[0].info.pop("nan")) and episodes[1].steps[0].info.pop("nan") is not None
    assert back[1] == episodes[1]
    assert back[0].transcripts[0].extras[ALLOWED] == {5: [2508, 2509], 7: [151645]}  # positions survive JSON
    assert (info.name, info.kind, info.config, info.episodes, info.steps, info.won) == (
        "roundtrip", "train", {"lr": 1e-6}, 4, 4, 1,
    )  # fmt: skip
    assert info.mean_return == pytest.approx((1.0 - 0.5 + 0.0 + 0.0) / 4)


def test_transcripts_are_stored_as_compact_binary(store_url):
    from sqlalchemy import select

    from agentrl.store.models import transcripts_table

    with open_store(store_url) as store:
        run = store.start_run("sizes")
        store.write_episode(run, model_episode())
        with store.engine.connect() as conn:
            (row,) = conn.execute(select(transcripts_table)).all()
    ids = [151644, 8948, 198, 2610, 525, 2508, 37179, 151645, 785, 37179, 22743, 23268, 151645]
    assert bytes(row.ids) == b"i" + array("i", ids).tobytes()  # Qwen ids exceed uint16: 4 bytes each
    assert bytes(row.turns) == b"B" + bytes([0] * 8 + [1] * 5)
    assert bytes(row.sampled) == b"B" + bytes([0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1])
    # Sampled-only fields hold the 6 sampled tokens, not all 13: prompt text costs no float columns.
    assert bytes(row.loss_mask) == b"B" + bytes([1, 1, 1, 1, 1, 0])
    assert bytes(row.versions) == b"B" + bytes([3, 3, 3, 4, 4, 4])
    assert len(row.logprobs) == 1 + 8 * 6 and len(row.entropies) == 1 + 8 * 6  # not all float32-exact: float64


def test_batch_write_is_all_or_nothing(store_url):
    bad = model_episode("bad")
    bad.steps[1].action = None  # not a string: rejected before anything is written
    with open_store(store_url) as store:
        run = store.start_run("atomic")
        with pytest.raises(StoreError, match="episode 1 turn 1: action must be a string"):
            store.write_episodes(run, [model_episode("ok"), bad])
        with pytest.raises(StoreError, match="does not fit a 32-bit"):
            store.write_episodes(run, [model_episode("ok", version=2**31)])
        with pytest.raises(StoreError, match="write to .* failed"):  # no such run: the database refuses
            store.write_episodes(9999, [model_episode("ok"), model_episode("ok2")])
        assert store.count_episodes() == 0
        ids = store.write_episodes(run, [model_episode("a"), model_episode("b")])  # PostgreSQL may skip ids
        assert [(i, ep.task_id) for i, ep in store.iter_episodes(run, with_ids=True)] == list(zip(ids, "ab", strict=True))


def test_selection_by_run_version_split_outcome_group(store_url):
    with open_store(store_url) as store:
        run_a, run_b = store.start_run("a"), store.start_run("b")
        # (task, version, split, won, group); the episode spans version..version+1 (see model_episode)
        spec = [("e1", 1, "train", False, "g1"), ("e2", 3, "train", True, "g1"), ("e3", 5, "valid", True, "g2"),
                ("e4", 6, "train", False, "g2"), ("e5", None, "train", True, "g3")]  # fmt: skip
        ids = [store.write_episode(run_a, model_episode(t, version=v, split=s, won=w, group=g)) for t, v, s, w, g in spec]
        store.write_episode(run_b, model_episode("other", version=3))

        def tasks(**kw):
            return [ep.task_id for ep in store.read_episodes(**kw)]

        assert tasks(run_id=run_a) == ["e1", "e2", "e3", "e4", "e5"]
        assert tasks(run_id=run_b) == ["other"]
        assert tasks(run_id=run_a, policy_versions=(3, 6)) == ["e2", "e3"]  # e4 spans 6..7
        assert tasks(run_id=run_a, policy_versions=(4, 7)) == ["e3", "e4"]
        assert tasks(policy_versions=(3, 4)) == ["e2", "other"]  # all runs
        assert tasks(run_id=run_a, split="valid") == ["e3"]
        assert tasks(run_id=run_a, won=True) == ["e2", "e3", "e5"]
        assert tasks(run_id=run_a, won=False, split="train") == ["e1", "e4"]
        assert tasks(run_id=run_a, group_id="g2") == ["e3", "e4"]
        assert tasks(run_id=run_a, limit=2) == ["e1", "e2"]
        assert tasks(run_id=run_a, since_id=ids[2]) == ["e4", "e5"]
        chunks = list(store.iter_episode_chunks(run_a, batch_size=2))
        assert [[ep.task_id for _, ep in chunk] for chunk in chunks] == [["e1", "e2"], ["e3", "e4"], ["e5"]]
        assert store.count_episodes(run_a, won=True) == 3
        assert store.get_run("a").id == run_a and store.get_run(str(run_b)).name == "b"
        assert store.get_episode(ids[1]).task_id == "e2"
        with pytest.raises(StoreError, match="no run 'zzz'"):
            store.get_run("zzz")
        with pytest.raises(ValueError, match="low must be <= high"):
            store.read_episodes(policy_versions=(5, 1))


def test_exports_parquet_jsonl_and_hf_dataset(store_url, tmp_path):
    import pyarrow.parquet as pq

    with open_store(store_url) as store:
        run = store.start_run("export")
        ids = [store.write_episode(run, model_episode(f"t{i}", won=i % 2 == 0)) for i in range(3)]
        steps_path, tokens_path, jsonl_path = tmp_path / "steps.parquet", tmp_path / "tokens.parquet", tmp_path / "eps.jsonl"
        assert export.export_parquet(store, str(steps_path), run) == 6
        assert export.export_parquet(store, str(tokens_path), run, level="transcript") == 3
        assert export.export_jsonl(store, str(jsonl_path), run) == 3
        assert export.export_jsonl(store, str(tmp_path / "tokens.jsonl"), run, level="transcript", won=False) == 1
        won = export.to_hf_dataset(store, run, won=True)
        episodes_table = export.to_arrow(store, run, level="episode")
        with pytest.raises(ValueError, match="pass the tokenizer"):
            export.to_arrow(store, run, level="sft")
    rows = pq.read_table(steps_path).to_pylist()
    reference = model_episode("t1", won=False)
    row = rows[3]  # episode t1, turn 1
    assert (row["episode_id"], row["task_id"], row["turn"], row["won"]) == (ids[1], "t1", 1, False)
    assert row["action"] == "take apple" and row["policy_version"] == 4
    assert json.loads(row["info"]) == reference.steps[1].info
    token_row = pq.read_table(tokens_path).to_pylist()[1]  # the token view: the transcript exactly
    (transcript,) = reference.transcripts
    assert (token_row["episode_id"], token_row["position"]) == (ids[1], 0)
    assert token_row["input_ids"] == transcript.ids
    for name in ("turns", "sampled", "loss_mask", "logprobs", "entropies", "versions"):
        assert token_row[name] == getattr(transcript, name), name
    assert json.loads(token_row["sampling"]) == transcript.sampling
    # What a Hugging Face trainer needs: every token attended, labels only where the learner trains
    # (turn 1's last token was forced: loss mask 0, so no label).
    assert token_row["attention_mask"] == [1] * 13
    assert token_row["labels"] == [-100] * 5 + [2508, 37179, 151645] + [-100, -100] + [22743, 23268, -100]
    assert token_row["rewards"] == [0.0, 0.0]
    assert json.loads(token_row["extras"]) == {"allowed": {"5": [2508, 2509], "7": [151645]}}
    (jsonl_row,) = [json.loads(line) for line in (tmp_path / "tokens.jsonl").read_text().splitlines()]
    assert jsonl_row == token_row
    lines = jsonl_path.read_text().splitlines()
    assert episode_from_dict(json.loads(lines[1])) == reference
    assert len(won) == 2 and won["task_id"] == ["t0", "t2"] and "messages" not in won.column_names
    assert won[0]["actions"] == ["open fridge", "take apple"] and won[0]["rewards"] == [0.0, 1.0]
    assert episodes_table.num_rows == 3 and episodes_table.column("episode_return").to_pylist() == [1.0, 0.0, 1.0]
