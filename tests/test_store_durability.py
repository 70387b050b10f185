"""Nothing is ever lost or half-written: kill -9 of a writer, and several writer processes at once.

The writers are real subprocesses (``WRITER`` below) on SQLite and on a real PostgreSQL server.
Each episode's content is a pure function of (writer, index), so the checks can regenerate what
every stored episode must be, field for field.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from agentrl.store import open_store

WRITER = r'''
import sys, time
from agentrl.store import open_store
from agentrl.testing import token_episode


def episode(writer, index):
    turns = 1 + index % 4
    return token_episode(
        [
            dict(
                observation=f"writer {writer} episode {index} turn {t}: " + "room " * 8,
                action=f"go {t}",
                reward=1.0 if t == turns - 1 else 0.0,
                prompt=list(range(index % 97, index % 97 + 20 + t)),
                response=[writer, index, t] * 4,
                logprobs=[-0.25] * 12,
                entropies=[0.5] * 12,
                version=index // 100,
            )
            for t in range(turns)
        ],
        env_id="agentrl/Synthetic-v0", task_id=f"w{writer}-e{index}", seed=index, group_id=f"w{writer}",
        agent="synthetic", policy_version=index // 100, first_observation=f"writer {writer} episode {index} turn 0: "
        + "room " * 8, won=True, progress=1.0, started_at=float(index), finished_at=index + 0.5,
        meta={"writer": writer, "index": index},
    )


if __name__ == "__main__":
    url, mode, run, writer, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    store = open_store(url, create=False)
    if mode == "count":  # write `count` episodes, then exit
        for index in range(count):
            store.write_episode(run, episode(writer, index))
    elif mode == "pause":  # write `count` episodes, then stop inside the next one's transaction
        from sqlalchemy import event

        for index in range(count):
            store.write_episode(run, episode(writer, index))

        @event.listens_for(store.engine, "after_cursor_execute")
        def pause(conn, cursor, statement, parameters, context, executemany):
            if statement.lstrip().upper().startswith("INSERT INTO STEPS"):
                print("inside", flush=True)
                time.sleep(600)

        store.write_episode(run, episode(writer, count))
    elif mode == "forever":  # write until killed, reporting progress
        index = 0
        while True:
            store.write_episode(run, episode(writer, index))
            index += 1
            if index % 100 == 0:
                print(index, flush=True)
'''


@pytest.fixture
def writer_module(tmp_path):
    path = tmp_path / "store_writer.py"
    path.write_text(WRITER)
    namespace: dict = {"__name__": "store_writer"}
    exec(compile(WRITER, str(path), "exec"), namespace)
    return path, namespace["episode"]


def spawn(script, url, mode, run, writer, count):
    return subprocess.Popen(
        [sys.executable, str(script), url, mode, str(run), str(writer), str(count)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def check_all_complete(url, make_episode):
    """Every stored episode is whole and exactly what its writer wrote; returns (writer, index) pairs."""
    with open_store(url, create=False) as store:
        assert store.check_integrity() == []
        found = []
        for episode in store.iter_episodes(batch_size=500):
            writer, index = episode.meta["writer"], episode.meta["index"]
            assert episode == make_episode(writer, index)
            found.append((writer, index))
    return found


@pytest.mark.slow
def test_kill_9_inside_a_transaction_and_at_random(store_url, writer_module):
    script, make_episode = writer_module
    with open_store(store_url) as store:
        run = store.start_run("kill-9", kind="rollout")

    # 1) Deterministic: the writer is stopped inside the transaction of episode 100, between its
    #    episode row and the commit, and killed there.
    proc = spawn(script, store_url, "pause", run, 1, 100)
    assert proc.stdout.readline().strip() == "inside", proc.stderr.read()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert sorted(check_all_complete(store_url, make_episode)) == [(1, i) for i in range(100)]

    # 2) At a random moment while writing thousands of episodes.
    proc = spawn(script, store_url, "forever", run, 2, 0)
    written = 0
    while written < 2000:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        written = int(line)
    time.sleep(0.05 + (time.time_ns() % 100) / 1000)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    found = check_all_complete(store_url, make_episode)
    second = sorted(index for writer, index in found if writer == 2)
    assert len(second) >= 2000 and second == list(range(len(second)))  # a prefix: nothing lost, nothing torn
    assert len(found) == 100 + len(second)


def test_an_open_write_transaction_holds_back_later_writers(store_url, writer_module):
    """Episodes become visible in id order: a writer waits while an earlier one is mid-transaction."""
    script, make_episode = writer_module
    with open_store(store_url) as store:
        run = store.start_run("order")
    first = spawn(script, store_url, "pause", run, 1, 0)  # stops inside its first episode's transaction
    assert first.stdout.readline().strip() == "inside", first.stderr.read()
    second = spawn(script, store_url, "count", run, 2, 1)
    time.sleep(3.0)
    assert second.poll() is None  # still waiting for the first writer's transaction
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert check_all_complete(store_url, make_episode) == [(2, 0)]


@pytest.mark.slow
def test_many_writer_processes_lose_nothing(store_url, writer_module):
    script, make_episode = writer_module
    writers, per_writer = 4, 100
    with open_store(store_url) as store:
        run = store.start_run("many-writers", kind="rollout")
    procs = [spawn(script, store_url, "count", run, w, per_writer) for w in range(writers)]
    # Meanwhile a learner follows the store with since_id: it must see every episode exactly once.
    seen: list[int] = []
    with open_store(store_url, create=False) as follower:
        deadline = time.time() + 300
        while len(seen) < writers * per_writer and time.time() < deadline:
            new = [i for i, _ in follower.iter_episodes(run, since_id=seen[-1] if seen else None, with_ids=True)]
            seen.extend(new)
            if not new:
                time.sleep(0.05)
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    assert len(seen) == len(set(seen)) == writers * per_writer
    found = check_all_complete(store_url, make_episode)
    assert sorted(found) == [(w, i) for w in range(writers) for i in range(per_writer)]
    with open_store(store_url, create=False) as store:
        (info,) = store.runs()
        assert info.episodes == writers * per_writer
        assert info.steps == writers * sum(1 + i % 4 for i in range(per_writer))


def _child_writes(store, run, make_episode, writer, count):
    for index in range(count):
        store.write_episode(run, make_episode(writer, index))
    os._exit(0)  # skip interpreter teardown in the forked child


def test_a_store_opened_before_fork_is_safe_in_the_children(store_url, writer_module):
    import multiprocessing

    _, make_episode = writer_module
    store = open_store(store_url)
    try:
        run = store.start_run("fork")
        store.write_episode(run, make_episode(0, 0))  # the parent's pool now holds a live connection
        children = [
            multiprocessing.get_context("fork").Process(target=_child_writes, args=(store, run, make_episode, w, 20))
            for w in (1, 2)
        ]
        for child in children:
            child.start()
        for index in range(1, 20):
            store.write_episode(run, make_episode(0, index))
        for child in children:
            child.join(timeout=120)
            assert child.exitcode == 0
        assert store.count_episodes(run) == 60  # and the parent's own connection still works
    finally:
        store.close()
    assert sorted(check_all_complete(store_url, make_episode)) == [(w, i) for w in range(3) for i in range(20)]


def test_sqlite_writer_retries_while_another_holds_the_lock(tmp_path, monkeypatch, writer_module):
    import sqlite3
    import threading

    from agentrl.store import engine as store_engine

    _, make_episode = writer_module
    monkeypatch.setattr(store_engine, "SQLITE_BUSY_TIMEOUT_S", 0.05)  # give up waiting fast, then retry
    path = tmp_path / "locked.db"
    with open_store(path) as store:
        run = store.start_run("lock")
        holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the write lock ...
        release = threading.Timer(1.0, holder.execute, args=("COMMIT",))  # ... for one second
        release.start()
        start = time.perf_counter()
        store.write_episode(run, make_episode(0, 0))
        waited = time.perf_counter() - start
        release.join()
        holder.close()
        assert waited >= 0.9  # it could only commit after the other writer let go
        assert [ep.meta["index"] for ep in store.read_episodes(run)] == [0]
        assert store.check_integrity() == []
