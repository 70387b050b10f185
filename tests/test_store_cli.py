"""Store schema migrations, bad input, and the command line (``agentrl store ...``, ``eval --store``)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from agentrl.cli import app
from agentrl.store import SCHEMA_HEAD, StoreError, codec, open_store, upgrade_schema
from agentrl.store.models import SCHEMA_REVISIONS, Base
from agentrl.testing import installed_cli, token_episode

runner = CliRunner()


def cli(*args: str) -> subprocess.CompletedProcess:
    """The real console entry point in a subprocess (its error formatting is what users see)."""
    code = "import sys; from agentrl.cli import main; sys.argv = ['agentrl'] + sys.argv[1:]; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- migrations ----------------------------------------------------------------------------------
def test_migration_scripts_build_exactly_the_models(store_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from agentrl.store.migrate import script_revisions

    assert script_revisions() == list(SCHEMA_REVISIONS)
    assert upgrade_schema(store_url, create=True) == (None, SCHEMA_HEAD)
    engine = create_engine(store_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()
    with open_store(store_url, create=False) as store:  # and the store opens it as its own
        assert store.schema_revision() == SCHEMA_HEAD


def _write_schema_0001_store(url: str) -> None:
    """A store as agentrl with schema 0001 wrote it (raw SQL: today's code cannot write that schema)."""
    assert upgrade_schema(url, "0001", create=True) == (None, "0001")
    engine = create_engine(url)
    episode = ("INSERT INTO episodes (run_id, env_id, task_id, split, seed, group_id, agent, policy_version, "
               "instruction, first_observation, won, progress, episode_return, turns, truncated, error, started_at, "
               "finished_at, meta) VALUES (:run, 'agentrl/TextWorld-v0', :task, 'train', 7, 'g', 'policy', :version, "
               "NULL, 'start', :won, 1.0, 1.0, 2, false, NULL, 100.0, 101.0, '{}') RETURNING id")  # fmt: skip
    step = ("INSERT INTO steps (episode_id, turn, observation, action, reward, terminated, truncated, info, env_seconds, "
            "generation_seconds, prompt_ids, response_ids, loss_mask, logprobs, entropies, policy_version) VALUES "
            "(:episode, :turn, 'obs', 'act', :reward, false, false, '{}', 0.5, 0.25, :prompt, :response, NULL, NULL, "
            "NULL, :version)")  # fmt: skip
    try:
        with engine.begin() as conn:
            run = conn.execute(text("INSERT INTO runs (name, kind, env_id, config, agentrl_version, created_at) "
                                    "VALUES ('old run', 'train', NULL, NULL, '0.0.9', 50.0) RETURNING id")).scalar_one()  # fmt: skip
            assert run == 1
            # episode 1: versions 2 (episode), 2 and 3 (turns); episode 2: no versions at all
            for number, version, turn_versions in ((1, 2, (2, 3)), (2, None, (None, None))):
                params = {"run": run, "task": f"t{number}", "version": version, "won": True}
                episode_id = conn.execute(text(episode), params).scalar_one()
                for turn, turn_version in enumerate(turn_versions):
                    conn.execute(text(step), {"episode": episode_id, "turn": turn, "reward": float(turn), "version": turn_version,
                                              "prompt": codec.encode_ints([1, 2, 3]), "response": codec.encode_ints([9])})  # fmt: skip
    finally:
        engine.dispose()


def test_a_store_from_an_older_schema_opens_after_upgrade(store_url):
    _write_schema_0001_store(store_url)
    with pytest.raises(StoreError, match=f"schema 0001, older than this agentrl's {SCHEMA_HEAD}") as excinfo:
        open_store(store_url)
    assert "agentrl store upgrade" in excinfo.value.hint
    result = runner.invoke(app, ["store", "upgrade", "--store", store_url])
    assert result.exit_code == 0, result.output
    assert f"upgraded store from schema 0001 to {SCHEMA_HEAD}" in result.output
    with open_store(store_url, create=False) as store:
        assert store.check_integrity() == []
        assert [ep.task_id for ep in store.read_episodes(1)] == ["t1", "t2"]
        # The 0002 backfill: episode 1 spans versions 2..3, episode 2 has none.
        assert [ep.task_id for ep in store.read_episodes(policy_versions=(2, 3))] == ["t1"]
        assert store.read_episodes(policy_versions=(3, 3)) == []
        old = store.read_episodes(1)[0]
        assert [s.reward for s in old.steps] == [0.0, 1.0]
        # 0003: both turns saw [1, 2, 3] (turn 1's prompt does not extend turn 0's [1, 2, 3, 9]): two transcripts
        assert [t.ids for t in old.transcripts] == [[1, 2, 3, 9], [1, 2, 3, 9]]
        assert [t.turns for t in old.transcripts] == [[0, 0, 0, 0], [1, 1, 1, 1]]
        run_id = store.start_run("new run")  # and the upgraded store takes new episodes
        assert run_id == 2
    assert f"up to date (schema {SCHEMA_HEAD})" in runner.invoke(app, ["store", "upgrade", "--store", store_url]).output


def _write_schema_0002_store(url: str) -> list:
    """A store as the 0002 writer left it (per-step token columns, prompts delta-encoded against the
    previous turn's prompt + response); returns the transcripts the agent would write today."""
    from agentrl.trajectory import Transcript

    assert upgrade_schema(url, "0002", create=True) == (None, "0002")
    # Episode 1 (concat): turn 1's prompt extends turn 0's context. Episode 2 (per step): it does not.
    concat = [([5, 6, 7], [300, 301], [1, 1], [-0.5, -1.25], [0.75, 0.5], 4),
              ([5, 6, 7, 300, 301, 8, 9], [302], [0], [-0.1], [0.3], 5)]  # fmt: skip
    per_step = [([5, 6, 7], [40, 41], [1, 1], [-0.25, -0.5], None, None),
                ([9, 8, 7], [42], [1], [-0.125], None, None)]  # fmt: skip
    expected = []
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            run = conn.execute(text("INSERT INTO runs (name, kind, env_id, config, agentrl_version, created_at) "
                                    "VALUES ('r', 'train', NULL, NULL, '0.1.0', 50.0) RETURNING id")).scalar_one()  # fmt: skip
            for number, turns in ((1, concat), (2, per_step)):
                episode_id = conn.execute(text(
                    "INSERT INTO episodes (run_id, env_id, task_id, split, seed, group_id, agent, policy_version, "
                    "instruction, first_observation, won, progress, episode_return, turns, truncated, error, started_at, "
                    "finished_at, meta, policy_version_min, policy_version_max, written_at) VALUES (:run, 'e', :task, "
                    "'train', 0, 'g', 'policy', NULL, NULL, 'start', false, 0.0, 0.0, 2, false, NULL, 1.0, 2.0, '{}', "
                    "NULL, NULL, 3.0) RETURNING id"), {"run": run, "task": f"t{number}"}).scalar_one()  # fmt: skip
                context, transcripts = None, []
                for turn, (prompt, response, mask, logprobs, entropies, version) in enumerate(turns):
                    conn.execute(text(
                        "INSERT INTO steps (episode_id, turn, observation, action, reward, terminated, truncated, info, "
                        "env_seconds, generation_seconds, prompt_ids, response_ids, loss_mask, logprobs, entropies, "
                        "policy_version) VALUES (:episode, :turn, 'o', 'a', 0.0, false, false, '{}', 0.1, 0.1, :prompt, "
                        ":response, :mask, :logprobs, :entropies, :version)"), {
                        "episode": episode_id, "turn": turn, "prompt": codec.encode_prompt(prompt, context),
                        "response": codec.encode_ints(response), "mask": codec.encode_ints(mask),
                        "logprobs": codec.encode_floats(logprobs), "entropies": codec.encode_floats(entropies),
                        "version": version})  # fmt: skip
                    context = prompt + response
                    current = transcripts[-1] if transcripts and prompt[: len(transcripts[-1].ids)] == transcripts[-1].ids else None
                    if current is None:
                        current = Transcript()
                        transcripts.append(current)
                    current.append_prompt(prompt[len(current.ids) :], turn)
                    current.append_sampled(response, turn, logprobs=logprobs, entropies=entropies, loss_mask=mask, version=version)
                expected.append(transcripts)
    finally:
        engine.dispose()
    return expected


def test_upgrading_a_0002_store_rebuilds_the_transcripts_exactly(store_url):
    expected = _write_schema_0002_store(store_url)
    assert upgrade_schema(store_url) == ("0002", SCHEMA_HEAD)
    with open_store(store_url, create=False) as store:
        assert store.check_integrity() == []
        concat, per_step = store.read_episodes(1)
        assert [concat.transcripts, per_step.transcripts] == expected
        assert len(concat.transcripts) == 1 and len(per_step.transcripts) == 2
        assert concat.transcripts[0].ids == [5, 6, 7, 300, 301, 8, 9, 302]
        assert per_step.transcripts[0].entropies is None and concat.steps[1].policy_version == 5
    # and back down: 0002's columns come back byte for byte, and up again gives the same transcripts
    assert upgrade_schema(store_url, "0002") == (SCHEMA_HEAD, "0002")
    engine = create_engine(store_url)
    try:
        with engine.connect() as conn:
            prompt = conn.execute(text("SELECT prompt_ids FROM steps WHERE episode_id = 1 AND turn = 1")).scalar_one()
        assert bytes(prompt) == codec.encode_prompt([5, 6, 7, 300, 301, 8, 9], [5, 6, 7, 300, 301])
    finally:
        engine.dispose()
    upgrade_schema(store_url)
    with open_store(store_url, create=False) as store:
        assert [ep.transcripts for ep in store.read_episodes(1)] == expected


def test_upgrading_a_0003_store_gives_runs_a_status_and_keeps_everything(store_url):
    assert upgrade_schema(store_url, "0003", create=True) == (None, "0003")
    engine = create_engine(store_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO runs (name, kind, env_id, config, agentrl_version, created_at) "
                              "VALUES ('before 0004', 'train', 'e', '{\"lr\": 0.5}', '0.1.0', 50.0)"))  # fmt: skip
    finally:
        engine.dispose()
    assert upgrade_schema(store_url) == ("0003", "0004")
    with open_store(store_url, create=False) as store:
        store.write_episodes(1, [token_episode([{"prompt": [1, 2], "response": [3], "reward": 1.0}])])
        (old,) = store.runs()
        assert (old.name, old.config, old.status, old.git_sha, old.finished_at) == ("before 0004", {"lr": 0.5}, None, None, None)
        new = store.start_run("after", git_sha="abc123")
        store.set_run_status(new, "interrupted")
        info = store.get_run(new)
        assert (info.status, info.git_sha) == ("interrupted", "abc123") and info.finished_at is not None
    # down and up again: 0003 has no such columns; the runs survive
    assert upgrade_schema(store_url, "0003") == ("0004", "0003")
    engine = create_engine(store_url)
    try:
        with engine.connect() as conn:
            columns = {c for c in conn.execute(text("SELECT * FROM runs")).keys()}
        assert not {"status", "git_sha", "finished_at"} & columns
    finally:
        engine.dispose()
    assert upgrade_schema(store_url) == ("0003", "0004")
    with open_store(store_url, create=False) as store:
        assert [r.name for r in store.runs()] == ["before 0004", "after"]
        (episode,) = store.read_episodes(1)  # the runs' episodes survive the way down (no cascade)
        assert episode.transcripts[0].ids == [1, 2, 3] and store.check_integrity() == []


# --- bad input: one line each, nothing written ---------------------------------------------------
def test_store_of_a_newer_schema_is_refused_untouched(tmp_path):
    path = tmp_path / "future.db"
    with open_store(path) as store:
        store.start_run("r")
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    before = digest(path)
    with pytest.raises(StoreError, match="schema 0099, newer than this agentrl knows") as excinfo:
        open_store(path)
    assert "upgrade agentrl" in excinfo.value.hint
    with pytest.raises(StoreError, match="newer"):
        upgrade_schema(str(path))
    assert digest(path) == before


def test_corrupt_and_foreign_sqlite_files_are_refused_untouched(tmp_path):
    not_sqlite = tmp_path / "notes.db"
    not_sqlite.write_bytes(b"these are my notes, not a database\n" * 10)
    damaged = tmp_path / "damaged.db"
    with open_store(damaged) as store:
        store.start_run("r")
    data = bytearray(damaged.read_bytes())
    data[200:3000] = bytes((i * 37) % 251 for i in range(2800))  # garble the schema page, keep the header
    damaged.write_bytes(bytes(data))
    foreign = tmp_path / "foreign.db"
    engine = create_engine(f"sqlite:///{foreign}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE customers (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    cases = [(not_sqlite, "is not a SQLite database"), (damaged, "is a corrupt SQLite database"),
             (foreign, "holds other tables \\(customers\\) and no agentrl store schema")]  # fmt: skip
    for path, message in cases:
        before = digest(path)
        with pytest.raises(StoreError, match=message) as excinfo:
            open_store(path)
        assert "\n" not in str(excinfo.value)
        assert digest(path) == before
    missing = tmp_path / "missing.db"
    with pytest.raises(StoreError, match="no store at"):
        open_store(missing, create=False)
    assert not missing.exists()
    with pytest.raises(StoreError, match="directory .* does not exist"):
        open_store(tmp_path / "nowhere" / "x.db")
    with pytest.raises(StoreError, match="unsupported store backend 'mysql'"):
        open_store("mysql://user@localhost/db")
    with pytest.raises(StoreError, match="invalid store URL"):
        open_store("sqlite://:::/")


def test_cli_reports_bad_stores_in_one_line(tmp_path):
    with socket.socket() as sock:  # a port on which nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\x00\x01 garbage" * 100)
    cases = [
        (f"postgresql://postgres@127.0.0.1:{port}/agentrl", f"error: cannot connect to postgresql+psycopg://postgres@127.0.0.1:{port}/agentrl: "),
        (str(garbage), f"error: {garbage} is not a SQLite database"),
        (str(tmp_path / "absent.db"), f"error: no store at {tmp_path / 'absent.db'}"),
    ]  # fmt: skip
    for url, first_line in cases:
        done = cli("store", "ls", "--store", url)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, done.stderr
        assert lines[0].startswith(first_line), lines
        assert len(lines) == 2 and lines[1].startswith("hint: ")
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "absent.db").exists()


# --- the command line ----------------------------------------------------------------------------
@pytest.mark.slow
def test_eval_records_every_episode_and_store_commands_read_them(tmp_path):
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    report_path = tmp_path / "report.json"
    result = runner.invoke(app, ["eval", "textworld", "--agent", "expert", "--episodes", "2", "--group-size", "2",
                                 "--store", store, "--output", str(report_path)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "recorded 4 episodes as run 1" in result.output
    report = json.loads(report_path.read_text())
    with open_store(store, create=False) as opened:
        (info,) = opened.runs()
        pairs = list(opened.iter_episodes(info.id, with_ids=True))
    assert (info.kind, info.env_id, info.episodes) == ("eval", "agentrl/TextWorld-v0", 4)
    assert info.config["group_size"] == 2 and info.config["agent"] == "expert"
    for (_, stored), reported in zip(pairs, report["episodes"], strict=True):
        assert (stored.task_id, stored.seed, stored.won, stored.turns) == (
            reported["task_id"], reported["seed"], reported["won"], reported["turns"])  # fmt: skip
        assert [s.action for s in stored.steps] == reported["actions"]
        assert stored.episode_return == pytest.approx(reported["return"])
        assert stored.agent == "expert" and stored.split == report["split"]

    listing = runner.invoke(app, ["store", "ls", "--store", store], env={"COLUMNS": "250"})
    assert listing.exit_code == 0, listing.output
    row = next(line for line in listing.output.splitlines() if line.startswith("│  1 │"))
    cells = [cell.strip() for cell in row.strip("│").split("│")]
    steps = sum(ep.turns for _, ep in pairs)
    # an evaluation of the expert: its episodes are the run's own, not demonstrations; the run finished
    assert cells[3:9] == ["finished", "agentrl/TextWorld-v0", "4", "-", str(steps), f"{report['summary']['success_rate']:.3f}"]
    episode_id, episode = pairs[1]
    shown = runner.invoke(app, ["store", "show", "1", "--episode", str(episode_id), "--store", store], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    for turn, step in enumerate(episode.steps):
        assert f"turn {turn} reward {step.reward:+.3f}" in shown.output
        assert f"> {step.action}" in shown.output
    assert ("won: return" if episode.won else "return") in shown.output
    wrong = runner.invoke(app, ["store", "show", "1", "--episode", "999", "--store", store])
    assert wrong.exit_code != 0 and "episode 999 is not in run 1" in str(wrong.exception)

    for fmt, name in (("parquet", "steps.parquet"), ("jsonl", "episodes.jsonl"), ("hf", "dataset")):
        done = runner.invoke(app, ["store", "export", "1", "--format", fmt, "--output", str(tmp_path / name), "--store", store])
        assert done.exit_code == 0, done.output
    import datasets
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "steps.parquet").num_rows == steps
    assert len((tmp_path / "episodes.jsonl").read_text().splitlines()) == 4
    dataset = datasets.load_from_disk(str(tmp_path / "dataset"))
    assert len(dataset) == 4 and dataset[0]["actions"] == [step.action for step in pairs[0][1].steps]
    assert os.path.exists(tmp_path / "runs.db")


# --- stores the file system refuses: full, read-only ----------------------------------------------
AGENTRL = installed_cli()
needs_mounts = pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root and unshare to mount a private tmpfs"
)


def in_private_mount(script: str, mountpoint: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``script`` (sh; ``$1`` = ``mountpoint``, ``$2`` = the agentrl script, then ``args``) in a
    mount namespace of its own: the tmpfs it mounts exists only for it and goes away with it."""
    mountpoint.mkdir()
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                           str(mountpoint), AGENTRL, *args], capture_output=True, text=True, timeout=300)  # fmt: skip


@needs_mounts
@pytest.mark.parametrize(("free_kb", "detail"), [(0, "database or disk is full"), (12, "disk I/O error")])
def test_creating_a_store_on_a_full_disk_is_one_line_and_leaves_no_file(tmp_path, free_kb, detail):
    script = """
    mount -t tmpfs -o size=64k tmpfs "$1" || exit 99
    dd if=/dev/zero of="$1/fill" bs=1k count=$((64 - $3)) 2>/dev/null
    "$2" eval textworld --agent expert --episodes 1 --store "$1/runs.db" >/dev/null
    echo "rc=$?"
    ls -A "$1"
    """
    done = in_private_mount(script, tmp_path / "mnt", str(free_kb))
    assert done.stdout.split() == ["rc=2", "fill"], (done.stdout, done.stderr)  # exit 2, and no store file left
    first, hint = done.stderr.strip().splitlines()
    assert first == f"error: cannot open SQLite store {tmp_path / 'mnt' / 'runs.db'}: {detail}"
    assert hint.startswith("hint: ") and "df -h" in hint


def _store_with_one_episode(path: Path, observation: str = "You are in a kitchen.", action: str = "open fridge",
                            task_id: str = "easy/1", error: str | None = None) -> None:
    from agentrl.trajectory import Episode, Step

    episode = Episode(env_id="agentrl/TextWorld-v0", task_id=task_id, split="valid", seed=0, agent="expert",
                      first_observation=observation, error=error,
                      steps=[Step(observation, action, reward=1.0, terminated=True)], won=True, progress=1.0)  # fmt: skip
    with open_store(path) as store:
        store.write_episode(store.start_run("kept run"), episode)


@needs_mounts
def test_a_store_on_a_read_only_mount_can_be_read(tmp_path):
    source = tmp_path / "runs.db"
    _store_with_one_episode(source)
    assert not Path(f"{source}-wal").exists()  # closed cleanly: everything is in the main file
    script = """
    mount -t tmpfs tmpfs "$1" && cp "$3" "$1/runs.db" && mount -o remount,ro "$1" || exit 99
    COLUMNS=200 "$2" store ls --store "sqlite:///$1/runs.db"; echo "rc=$?"
    COLUMNS=200 "$2" store show 1 --episode 1 --store "$1/runs.db"; echo "rc=$?"
    "$2" store export 1 --format jsonl --output "$4" --store "$1/runs.db"; echo "rc=$?"
    "$2" eval textworld --agent expert --episodes 1 --store "$1/runs.db" >/dev/null; echo "rc=$?"
    ls -A "$1"
    """
    exported = tmp_path / "episodes.jsonl"
    done = in_private_mount(script, tmp_path / "mnt", str(source), str(exported))
    out = done.stdout
    assert [line for line in out.splitlines() if line.startswith("rc=")] == ["rc=0", "rc=0", "rc=0", "rc=2"], (out, done.stderr)
    assert "│  1 │ kept run │ eval │" in out and "> open fridge" in out and "won: return 1.000" in out
    assert json.loads(exported.read_text())["steps"][0]["action"] == "open fridge"
    assert out.strip().splitlines()[-1] == "runs.db"  # nothing written beside it (no -wal, no -shm)
    first, hint = done.stderr.strip().splitlines()  # the writer is refused in one line
    assert first.startswith(f"error: cannot open SQLite store {tmp_path / 'mnt' / 'runs.db'}: ")
    assert hint == "hint: the store cannot be written here (read-only file system or directory); reading it works"


# --- text from envs and agents never drives the terminal ------------------------------------------
def test_store_show_neutralises_terminal_escapes(tmp_path):
    """An observation that clears the screen and retitles the window, an action with a carriage return
    and a bidi override: `store show` prints them as visible escapes, and Rich markup in a task id as text."""
    path = tmp_path / "runs.db"
    _store_with_one_episode(path, observation="\x1b[2J\x1b]0;owned\x07room", action="go\rnorth\u202e",
                            task_id="[bold red]easy/1", error="boom\x1b[8m")  # fmt: skip
    env = {**os.environ, "COLUMNS": "200"}
    shown = subprocess.run([AGENTRL, "store", "show", "1", "--episode", "1", "--store", str(path)],
                           capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert not set("\x1b\x07\r\u202e") & set(shown.stdout)
    assert "\\x1b[2J\\x1b]0;owned\\x07room" in shown.stdout and "> go\\rnorth\\u202e" in shown.stdout
    assert "task [bold red]easy/1" in shown.stdout and "error: boom\\x1b[8m" in shown.stdout
    listed = subprocess.run([AGENTRL, "store", "show", "1", "--store", str(path)], capture_output=True, text=True,
                            timeout=120, env=env)  # fmt: skip
    assert listed.returncode == 0 and "\x1b" not in listed.stdout
    assert "[bold red]easy/1" in listed.stdout and "boom\\x1b[8m" in listed.stdout


def test_printable_escapes_exactly_the_terminal_controls():
    from agentrl.cli.common import printable

    kept = "line one\n\ttab, ünïcödé, 中文, emoji \U0001f600, zero-width joiner \u200d"
    assert printable(kept) == kept
    assert printable("\x1b[31mred\x1b[0m") == "\\x1b[31mred\\x1b[0m"
    assert printable("a\rb\x00c\x7fd\x9be") == "a\\rb\\x00c\\x7fd\\x9be"  # CR, NUL, DEL, 8-bit CSI
    assert printable("abc\u202edef\u2066x\u200f") == "abc\\u202edef\\u2066x\\u200f"
    assert printable("\x0b\x0c\x08") == "\\v\\f\\x08"
