"""How long `import agentrl` takes in a fresh interpreter, against `import gymnasium` (its floor).

Target (issue 2): under 0.5 s without torch loaded. Median of several fresh processes.
"""

from __future__ import annotations

import statistics
import subprocess
import sys

from _common import write_result

CODE = "import time, sys; t = time.perf_counter(); import {mod}; print(time.perf_counter() - t, 'torch' in sys.modules)"


def measure(mod: str, repeats: int = 7) -> tuple[float, bool]:
    times, torch_loaded = [], False
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", CODE.format(mod=mod)], capture_output=True, text=True, check=True)
        seconds, loaded = out.stdout.split()
        times.append(float(seconds))
        torch_loaded |= loaded == "True"
    return statistics.median(times), torch_loaded


if __name__ == "__main__":
    gym_s, _ = measure("gymnasium")
    agentrl_s, torch_loaded = measure("agentrl")
    print(f"import gymnasium: {gym_s * 1000:.0f} ms")
    print(f"import agentrl:   {agentrl_s * 1000:.0f} ms (ratio to gymnasium {agentrl_s / gym_s:.2f}x; torch loaded: {torch_loaded})")
    print(f"target < 500 ms: {'met' if agentrl_s < 0.5 and not torch_loaded else 'NOT met'}")
    write_result("import_time", {"gymnasium_s": gym_s, "agentrl_s": agentrl_s, "ratio": agentrl_s / gym_s,
                                 "torch_loaded": torch_loaded})
