"""The fuzz campaign (benchmarks/fuzz_inspect.py) in CI: one round of every mutation, in a child process.

The child isolates what a unit test could not survive (a segfault, a hang stopped by its faulthandler watchdog)
and measures memory the way the script does. Bounds: the issue's budget per inspected file, 64 MiB of extra
memory (tracemalloc peak per input, and RSS growth in a fresh process for the largest inputs) and 0.5 s, taken
as CPU time with a 2x margin for shared CI machines (wall time on them is load, not the reader).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "fuzz_inspect.py"
ROUND = 51  # one input per mutation
SEED = 11
CHILD_TIMEOUT_S = 170
MEMORY_BUDGET_BYTES = 64 * 2**20
CPU_BUDGET_S = 0.5
CI_TIME_MARGIN = 2.0


def test_every_hostile_input_ends_in_a_result_or_a_clean_error_within_budget():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--inputs", str(ROUND), "--seed", str(SEED), "--rss-top", "2", "--json",
         "--hang-seconds", "30"],
        capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": "0"})
    assert done.returncode in (0, 1), f"fuzz child died (signal {-done.returncode}): {done.stderr[-2000:]}"
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["crashes"] == [] and done.returncode == 0
    assert summary["code_ran"] is False, "a pickled os.system ran"
    assert summary["inputs"] == ROUND and len(summary["outcomes"]) >= ROUND - 4
    for label, counts in summary["outcomes"].items():
        assert all(name in ("result", "clean error") or name.startswith("limit MAX_") for name in counts), label
    assert summary["max_tracemalloc_peak_bytes"] <= MEMORY_BUDGET_BYTES, summary["max_peak_input"]
    if summary["max_rss_delta_bytes"] is not None:
        assert summary["max_rss_delta_bytes"] <= MEMORY_BUDGET_BYTES, summary["max_rss_input"]
    assert summary["max_cpu_seconds"] <= CPU_BUDGET_S * CI_TIME_MARGIN, summary["max_cpu_input"]
