"""Sandbox overhead: start-up and per-command cost of each backend against running the command directly.

Run: ``python benchmarks/sandbox_overhead.py [--repeats 20]``. In one run, for two commands
(``/bin/true``, the cheapest possible process, and ``python -c pass``, what an MLE attempt pays
before the program's own imports), it measures

* ``direct``: ``subprocess.run`` of the command on the host (the baseline);
* ``<backend> run``: ``sandbox.run(command)``: a fresh sandbox per command (start-up included);
* ``<backend> exec``: ``session.exec(command)`` in an open session (per-command cost only);
* ``<backend> open``: the time to open a session (Docker: create and start a container);
* ``<backend> run ws10``: ``sandbox.run(/bin/true)`` on a workspace holding 100 files of 100 kB, what an MLE
  step pays for its workspace (copied into the session's quota filesystem and compared back);

and, run as root, the worst case of the quota (``quota``): opening and closing a session whose workspace
fills the default inode quota with empty files, or the default size quota with one file (copy in, the
sweep after a command, copy back), which the host pays outside the command's time limit. It reports medians with the overhead in milliseconds and as a ratio over ``direct``. Docker is
measured against the daemon that answers, else a private one started for the run (skipped with the
reason when neither works). The JSON result (with the git SHA) goes to
``benchmarks/results/sandbox_overhead.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from agentrl.sandboxes import Limits, get_sandbox  # noqa: E402

COMMANDS = {"true": ["/bin/true"], "python": [sys.executable, "-c", "pass"]}


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up: first-call costs (page cache, image lookup) are not what a long run pays
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1000


def measure_backend(name: str, repeats: int, docker_url: str | None) -> dict:
    sandbox = get_sandbox(name, Limits(timeout_s=60), docker_url=docker_url)
    out: dict = {}
    with tempfile.TemporaryDirectory() as ws:

        def open_close() -> None:
            sandbox.open(ws).close()

        out["open_ms"] = _median_ms(open_close, max(3, repeats // 4))
        with sandbox.open(ws) as session:
            for label, argv in COMMANDS.items():
                out[f"exec_{label}_ms"] = _median_ms(lambda argv=argv: _check(session.exec(argv)), repeats)
        for label, argv in COMMANDS.items():
            out[f"run_{label}_ms"] = _median_ms(
                lambda argv=argv: _check(sandbox.run(argv)), max(3, repeats // 4)
            )
    with tempfile.TemporaryDirectory() as ws:
        for i in range(100):
            Path(ws, f"f{i}").write_bytes(os.urandom(100_000))
        out["run_true_ws10_ms"] = _median_ms(
            lambda: _check(sandbox.run(COMMANDS["true"], workspace=ws)), max(3, repeats // 4)
        )
    sandbox.close()
    return out


def measure_quota_worst_case() -> dict:
    """Seconds the host spends on a workspace that fills the default quota (root only, this code only)."""
    from agentrl.sandboxes.quota import QuotaWorkspace

    limits, out = Limits(), {}
    for label, fill in (("inodes", _fill_inodes), ("bytes", _fill_bytes)):
        with tempfile.TemporaryDirectory() as ws:
            quota = QuotaWorkspace(Path(ws), limits)
            fill(quota.inner, limits)
            t0 = time.perf_counter()
            quota.after_run()
            t1 = time.perf_counter()
            quota.close()
            t2 = time.perf_counter()
            again = QuotaWorkspace(Path(ws), limits)  # the next step: copy in, nothing changed, compare back
            t3 = time.perf_counter()
            again.close()
            t4 = time.perf_counter()
            out[label] = {"sweep_s": t1 - t0, "first_copy_back_s": t2 - t1, "copy_in_s": t3 - t2,
                          "unchanged_copy_back_s": t4 - t3}  # fmt: skip
    return out


def _fill_inodes(inner: Path, limits: Limits) -> None:
    for i in range(limits.inodes):
        try:
            (inner / f"f{i}").touch()
        except OSError:
            return


def _fill_bytes(inner: Path, limits: Limits) -> None:
    chunk = os.urandom(1 << 20)
    with open(inner / "big", "wb") as f:
        try:
            for _ in range(limits.disk_mb):
                f.write(chunk)
        except OSError:
            pass


def _check(result) -> None:
    if not result.ok:
        raise RuntimeError(f"sandboxed command failed: {result.reason} {result.stderr[:200]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    direct = {
        f"direct_{label}_ms": _median_ms(lambda argv=argv: subprocess.run(argv, check=True), args.repeats)
        for label, argv in COMMANDS.items()
    }
    results: dict = {"repeats": args.repeats, **direct, "backends": {}, "skipped": {}}
    with ExitStack() as stack:
        for name in ("bubblewrap", "docker"):
            docker_url = None
            if name == "docker":
                from agentrl.sandboxes.testing import DockerUnavailable, docker_daemon

                try:
                    docker_url = stack.enter_context(docker_daemon())
                except DockerUnavailable as exc:
                    results["skipped"][name] = str(exc)
                    continue
            try:
                data = measure_backend(name, args.repeats, docker_url)
            except Exception as exc:  # a backend that does not work here is reported, not fatal
                results["skipped"][name] = f"{type(exc).__name__}: {exc}"
                continue
            for label in COMMANDS:
                base = direct[f"direct_{label}_ms"]
                for mode in ("run", "exec"):
                    ms = data[f"{mode}_{label}_ms"]
                    data[f"{mode}_{label}_overhead_ms"] = ms - base
                    data[f"{mode}_{label}_ratio"] = ms / base
            data["run_true_ws10_overhead_ms"] = data["run_true_ws10_ms"] - direct["direct_true_ms"]
            results["backends"][name] = data
    if os.geteuid() == 0:
        try:
            results["quota"] = measure_quota_worst_case()
        except ImportError:  # a version without the quota filesystem
            pass

    print(f"{'':24}{'median ms':>12}{'overhead ms':>14}{'x direct':>10}")
    for label in COMMANDS:
        print(f"direct {label:<17}{direct[f'direct_{label}_ms']:>12.1f}")
        for name, data in results["backends"].items():
            for mode in ("run", "exec"):
                print(
                    f"{name} {mode} {label:<{17 - len(name) - len(mode) + 6}}{data[f'{mode}_{label}_ms']:>12.1f}"
                    f"{data[f'{mode}_{label}_overhead_ms']:>14.1f}{data[f'{mode}_{label}_ratio']:>10.1f}"
                )
    for name, data in results["backends"].items():
        print(f"{name} open session: {data['open_ms']:.1f} ms; run /bin/true on a 10 MB workspace: "
              f"{data['run_true_ws10_ms']:.1f} ms")  # fmt: skip
    for label, data in results.get("quota", {}).items():
        print(f"quota full of {label}: " + ", ".join(f"{k} {v:.2f}" for k, v in data.items()))
    for name, why in results["skipped"].items():
        print(f"{name}: skipped ({why})")
    path = write_result("sandbox_overhead", results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
