"""What ``agentrl view`` shows, as plain JSON data: runs of trajectory stores, evaluation reports, run directories.

A *source* is one set of episodes: a run in a store (``s{store}-{run}``) or an evaluation report
file (``e{index}``). Every source lists episode summaries (filterable by outcome, task, task type and
turns), gives whole episodes (observations and actions per turn, and for a store run with token
transcripts, every token with its log-prob, entropy and GRPO advantage), learning curves (the run
directory's ``metrics.jsonl``, else per policy version from the store), and two sources compare task
by task. Nothing here writes: stores are opened read-only (``create=False``) and only the files
given on the command line are read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrl.evaluation import task_type

#: Episodes a listing scans at most (the page shows a slice of the matches).
SCAN_LIMIT = 20_000


@dataclass
class Filters:
    """What a listing keeps: outcome, a task id substring, a task type, a turn range."""

    won: bool | None = None
    task: str | None = None
    task_type: str | None = None
    min_turns: int | None = None
    max_turns: int | None = None

    def keep(self, row: dict[str, Any]) -> bool:
        return (
            (self.won is None or row["won"] == self.won)
            and (not self.task or self.task in row["task_id"])
            and (not self.task_type or row["task_type"] == self.task_type)
            and (self.min_turns is None or row["turns"] >= self.min_turns)
            and (self.max_turns is None or row["turns"] <= self.max_turns)
        )


@dataclass
class Catalog:
    """The sources ``agentrl view`` was started with."""

    stores: list[Any] = field(default_factory=list)  # open agentrl Stores
    store_urls: list[str] = field(default_factory=list)
    reports: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    run_dirs: dict[tuple[int, str], Path] = field(default_factory=dict)  # (store index, run name) -> directory
    _tokenizers: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, store: str | None = None, paths: list[str | Path] | None = None) -> Catalog:
        """A catalog of ``store`` (a URL) and ``paths``: report JSON files and run directories.

        A run directory (holding ``run.json`` or ``metrics.jsonl``) brings its store (``store.db``
        there, or the URL its ``run.json`` names) and its learning curves. Raises ``ValueError`` for a
        path that is neither.
        """
        from agentrl.store import open_store

        catalog = cls()

        def add_store(url: str) -> int:
            if url in catalog.store_urls:
                return catalog.store_urls.index(url)
            catalog.stores.append(open_store(url, create=False))
            catalog.store_urls.append(url)
            return len(catalog.stores) - 1

        if store:
            add_store(store)
        for raw in paths or []:
            path = Path(raw)
            if path.is_dir():
                record = _read_json(path / "run.json") if (path / "run.json").is_file() else {}
                url = record.get("store") or (f"sqlite:///{(path / 'store.db').resolve()}" if (path / "store.db").is_file() else None)
                if url is None and not (path / "metrics.jsonl").is_file():
                    raise ValueError(f"{path} is not a run directory (no run.json, store.db or metrics.jsonl)")
                index = add_store(url) if url else -1
                catalog.run_dirs[(index, record.get("run_name") or path.name)] = path
            elif path.is_file():
                data = _read_json(path)
                if not isinstance(data, dict) or not isinstance(data.get("episodes"), list):
                    raise ValueError(f"{path} is not an evaluation report (agentrl eval --output)")
                catalog.reports.append((path, data))
            else:
                raise ValueError(f"{path} does not exist")
        return catalog

    def close(self) -> None:
        for store in self.stores:
            store.close()

    # ------------------------------------------------------------------ sources

    def sources(self) -> list[dict[str, Any]]:
        """Every source with its headline numbers."""
        out = []
        for index, store in enumerate(self.stores):
            for run in store.runs():
                out.append({
                    "id": f"s{index}-{run.id}", "kind": "run", "name": run.name, "run_kind": run.kind, "env_id": run.env_id,
                    "status": run.status, "git_sha": run.git_sha, "created_at": run.created_at, "episodes": run.rollouts,
                    "demonstrations": run.demonstrations, "success_rate": run.rollout_success,
                    "mean_return": run.rollout_mean_return, "store": self.store_urls[index],
                    "curves": self._run_dir(index, run.name, run.config) is not None or run.episodes > 0,
                })  # fmt: skip
        for (index, name), _ in self.run_dirs.items():
            if index < 0:
                out.append({"id": f"d-{name}", "kind": "run", "name": name, "run_kind": "train", "episodes": 0, "curves": True})
        for index, (path, data) in enumerate(self.reports):
            summary = data.get("summary") or {}
            out.append({
                "id": f"e{index}", "kind": "report", "name": path.name, "env_id": data.get("env_id"), "agent": data.get("agent"),
                "split": data.get("split"), "episodes": len(data["episodes"]), "success_rate": summary.get("success_rate"),
                "mean_return": summary.get("mean_return"), "git_sha": data.get("git_sha"), "benchmark": data.get("benchmark"),
                "max_turns": data.get("max_turns"), "curves": False,
            })  # fmt: skip
        return out

    def episodes(self, source: str, filters: Filters, *, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        """``{"total": matches, "task_types": [...], "episodes": [summary, ...]}`` (a page of the matches)."""
        rows = [row for row in self._summaries(source) if filters.keep(row)]
        types = sorted({row["task_type"] for row in self._summaries(source) if row["task_type"]})
        return {"total": len(rows), "task_types": types, "episodes": rows[offset : offset + limit]}

    def episode(self, source: str, episode: str) -> dict[str, Any]:
        """One whole episode: turns (observation, action, reward) and, for a store run, its tokens."""
        kind, index, run_id = self._parse(source)
        if kind == "report":
            data = self.reports[index][1]
            position = int(episode)
            if not 0 <= position < len(data["episodes"]):
                raise KeyError(f"no episode {episode} in {source}")
            ep = data["episodes"][position]
            steps = ep.get("steps") or [{"observation": None, "action": a, "reward": None} for a in ep.get("actions", [])]
            return {**_report_summary(position, ep), "instruction": ep.get("instruction"), "steps": steps, "tokens": None}
        store = self.stores[index]
        if store.episode_run(int(episode)) != run_id:
            raise KeyError(f"no episode {episode} in {source}")
        ep = store.get_episode(int(episode))
        info = store.get_run(run_id)
        return {
            **_store_summary(int(episode), ep), "instruction": ep.instruction, "first_observation": ep.first_observation,
            "steps": [{"observation": s.observation, "action": s.action, "reward": s.reward,
                       "invalid_action": bool(s.info.get("invalid_action")), "policy_version": s.policy_version}
                      for s in ep.steps],
            "tokens": self._tokens(ep, self._advantage(store, run_id, int(episode), ep), info.config or {}, index, info.name),
        }  # fmt: skip

    def curves(self, source: str) -> dict[str, Any]:
        """``{"from": "metrics.jsonl" | "store", "metrics": {name: [[step, value], ...]}}``."""
        if source.startswith("d-"):
            return _metrics_curves(self.run_dirs[(-1, source[2:])])
        kind, index, run_id = self._parse(source)
        if kind == "report":
            return {"from": None, "metrics": {}}
        info = self.stores[index].get_run(run_id)
        run_dir = self._run_dir(index, info.name, info.config)
        if run_dir is not None and (run_dir / "metrics.jsonl").is_file():
            return _metrics_curves(run_dir)
        return self._store_curves(index, run_id)

    def compare(self, a: str, b: str) -> dict[str, Any]:
        """Tasks both sources played, each with both sides' episodes, success rate and mean return."""
        sides = []
        for source in (a, b):
            by_task: dict[str, list[dict[str, Any]]] = {}
            for row in self._summaries(source):
                if not row["demonstration"]:
                    by_task.setdefault(row["task_id"], []).append(row)
            sides.append(by_task)
        common = [task for task in sides[0] if task in sides[1]]
        rows = []
        for task in common:
            entry: dict[str, Any] = {"task_id": task, "task_type": sides[0][task][0]["task_type"]}
            for name, side in zip("ab", sides, strict=True):
                eps = side[task]
                entry[name] = {"episodes": [e["id"] for e in eps], "success_rate": sum(e["won"] for e in eps) / len(eps),
                               "mean_return": sum(e["return"] for e in eps) / len(eps)}  # fmt: skip
            rows.append(entry)
        return {"a": a, "b": b, "tasks": rows, "only_a": len(sides[0]) - len(common), "only_b": len(sides[1]) - len(common)}

    # ------------------------------------------------------------------ internals

    def _parse(self, source: str) -> tuple[str, int, int]:
        try:
            if source.startswith("e"):
                index = int(source[1:])
                if 0 <= index < len(self.reports):
                    return "report", index, -1
            elif source.startswith("s"):
                store_index, run_id = (int(x) for x in source[1:].split("-", 1))
                if 0 <= store_index < len(self.stores):
                    return "run", store_index, run_id
        except ValueError:
            pass
        raise KeyError(f"no source {source!r}")

    def _summaries(self, source: str) -> list[dict[str, Any]]:
        kind, index, run_id = self._parse(source)
        if kind == "report":
            return [_report_summary(i, ep) for i, ep in enumerate(self.reports[index][1]["episodes"])]
        from sqlalchemy import select

        from agentrl.store import codec
        from agentrl.store.models import episodes_table as e
        from agentrl.store.runs import DEMONSTRATION_AGENTS

        store = self.stores[index]
        run = store.get_run(run_id)
        columns = (e.c.id, e.c.task_id, e.c.seed, e.c.group_id, e.c.agent, e.c.won, e.c.progress, e.c.episode_return,
                   e.c.turns, e.c.error, e.c.policy_version, e.c.meta)  # fmt: skip
        statement = select(*columns).where(e.c.run_id == run_id).order_by(e.c.id).limit(SCAN_LIMIT)
        with store.engine.connect() as conn:
            rows = conn.execute(statement).all()
        out = []
        for r in rows:
            meta = codec.load_json(r.meta) or {}
            out.append({
                "id": r.id, "task_id": r.task_id, "task_type": _type_of(meta), "seed": r.seed, "group_id": r.group_id,
                "agent": r.agent, "won": bool(r.won), "progress": r.progress, "return": r.episode_return, "turns": r.turns,
                "error": r.error, "policy_version": r.policy_version,
                "demonstration": run.kind != "eval" and r.agent in DEMONSTRATION_AGENTS,
            })  # fmt: skip
        return out

    def _run_dir(self, index: int, name: str, config: dict[str, Any] | None) -> Path | None:
        if (index, name) in self.run_dirs:
            return self.run_dirs[(index, name)]
        config = config or {}
        if config.get("output_dir") and config.get("run_name"):
            candidate = Path(config["output_dir"]) / str(config["run_name"])
            if (candidate / "metrics.jsonl").is_file():
                return candidate
        return None

    def _store_curves(self, index: int, run_id: int) -> dict[str, Any]:
        """Per policy version: the rollout success rate and mean return of the run's own episodes."""
        per_version: dict[int, list[dict[str, Any]]] = {}
        for row in self._summaries(f"s{index}-{run_id}"):
            if row["policy_version"] is not None and not row["demonstration"]:
                per_version.setdefault(row["policy_version"], []).append(row)
        versions = sorted(per_version)
        success = [[v, sum(r["won"] for r in per_version[v]) / len(per_version[v])] for v in versions]
        returns = [[v, sum(r["return"] for r in per_version[v]) / len(per_version[v])] for v in versions]
        return {"from": "store", "metrics": {"rollout/success_rate": success, "rollout/mean_return": returns} if versions else {}}

    def _advantage(self, store: Any, run_id: int, episode_id: int, ep: Any) -> float | None:
        """The episode's GRPO advantage in its group: the episodes of its task sampled together (same group id
        and policy version), standardised as the learner's default estimator does; None without a group."""
        if not ep.group_id or not ep.transcripts or ep.transcripts[0].logprobs is None:
            return None
        group = [(i, g) for i, g in store.iter_episodes(run_id, with_ids=True, group_id=ep.group_id)
                 if g.policy_version == ep.policy_version]  # fmt: skip
        if len(group) < 2:
            return None
        from agentrl.algorithms.grpo import advantages

        values = advantages(_tensor([g.episode_return for _, g in group]), [0] * len(group)).tolist()
        return next(v for (i, _), v in zip(group, values, strict=True) if i == episode_id)

    def _tokens(self, ep: Any, advantage: float | None, config: dict[str, Any], index: int, name: str) -> dict[str, Any] | None:
        if not ep.transcripts:
            return None
        tokenizer, where = self._tokenizer(config, index, name)
        transcripts = []
        for t in ep.transcripts:
            pieces = _pieces(tokenizer, t.ids)
            transcripts.append({
                "tokens": [
                    {"id": token, "text": piece, "turn": turn, "sampled": bool(sampled), "trained": bool(mask),
                     "logprob": _finite(t.logprobs[i]) if t.logprobs is not None and sampled else None,
                     "entropy": _finite(t.entropies[i]) if t.entropies is not None and sampled else None}
                    for i, (token, piece, turn, sampled, mask) in enumerate(zip(t.ids, pieces, t.turns, t.sampled, t.loss_mask, strict=True))
                ],
                "sampling": t.sampling,
            })  # fmt: skip
        return {"decoded_with": where, "advantage": advantage, "transcripts": transcripts,
                "has_logprobs": any(t.logprobs is not None for t in ep.transcripts),
                "has_entropies": any(t.entropies is not None for t in ep.transcripts)}  # fmt: skip

    def _tokenizer(self, config: dict[str, Any], index: int, name: str) -> tuple[Any, str | None]:
        """The run's tokenizer: its ``model`` (or ``actor_model``) directory, else its saved ``model/``; None: show ids."""
        candidates = [config.get("model"), config.get("actor_model")]
        run_dir = self._run_dir(index, name, config)
        if run_dir is not None:
            candidates.append(str(run_dir / "model"))
        for candidate in candidates:
            if not candidate or not Path(candidate, "tokenizer_config.json").is_file():
                continue  # only local directories: the viewer never downloads
            if candidate not in self._tokenizers:
                try:
                    from transformers import AutoTokenizer

                    self._tokenizers[candidate] = AutoTokenizer.from_pretrained(candidate)
                except Exception:  # an unreadable tokenizer: show ids rather than fail the page
                    self._tokenizers[candidate] = None
            if self._tokenizers[candidate] is not None:
                return self._tokenizers[candidate], candidate
        return None, None


def _pieces(tokenizer: Any, ids: list[int]) -> list[str]:
    if tokenizer is None:
        return [f"[{token}]" for token in ids]
    return [tokenizer.decode([token]) for token in ids]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _tensor(values: list[float]) -> Any:
    import torch

    return torch.tensor(values, dtype=torch.float64)


def _type_of(meta: dict[str, Any]) -> str | None:
    value = (meta.get("reset_info") or {}).get("task_type")
    return None if value is None else str(value)


def _store_summary(episode_id: int, ep: Any) -> dict[str, Any]:
    return {"id": episode_id, "task_id": ep.task_id, "task_type": task_type(ep), "seed": ep.seed, "group_id": ep.group_id,
            "agent": ep.agent, "won": ep.won, "progress": ep.progress, "return": ep.episode_return, "turns": ep.turns,
            "error": ep.error, "policy_version": ep.policy_version}  # fmt: skip


def _report_summary(position: int, ep: dict[str, Any]) -> dict[str, Any]:
    return {"id": position, "task_id": str(ep.get("task_id")), "task_type": ep.get("task_type"), "seed": ep.get("seed"),
            "group_id": None, "agent": None, "won": bool(ep.get("won")), "progress": ep.get("progress"),
            "return": ep.get("return") or 0.0, "turns": int(ep.get("turns") or 0), "error": ep.get("error"),
            "policy_version": None, "demonstration": False}  # fmt: skip


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not readable JSON ({exc})") from None


def _metrics_curves(run_dir: Path) -> dict[str, Any]:
    """Every numeric metric of ``metrics.jsonl`` as ``[step, value]`` points (a step logged twice keeps the last)."""
    series: dict[str, dict[int, float]] = {}
    with (run_dir / "metrics.jsonl").open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            record = json.loads(line)
            step = record.get("step")
            if not isinstance(step, int):
                continue
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                    series.setdefault(key, {})[step] = float(value)
    return {"from": "metrics.jsonl", "metrics": {k: [[s, x] for s, x in sorted(v.items())] for k, v in series.items()}}
