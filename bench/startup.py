"""Startup time of the commands a user types most, as whole processes (median of N runs),
beside the floor: importing the libraries the CLI is built on. Also checks that none of these
commands imports torch, transformers or litellm.

    python bench/startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOW = ROOT / "flows" / "challenge.yaml"
COMMANDS = {
    "floor: import typer, rich, yaml, pydantic, jinja2": [sys.executable, "-c",
                                                          "import typer, rich, yaml, pydantic, jinja2"],
    "deliberate --help": [sys.executable, "-m", "deliberate", "--help"],
    "deliberate models list": [sys.executable, "-m", "deliberate", "models", "list"],
    "deliberate flows validate challenge.yaml": [sys.executable, "-m", "deliberate", "flows", "validate", str(FLOW)],
}
HEAVY = ("torch", "transformers", "litellm")


def time_cmd(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def heavy_imports(args: list[str]) -> list[str]:
    """Which of the heavy modules a command imports (run in a fresh interpreter)."""
    code = "\n".join([
        "import sys, runpy",
        f"sys.argv = ['deliberate', *{args!r}]",
        "try:",
        "    runpy.run_module('deliberate', run_name='__main__')",
        "except SystemExit:",
        "    pass",
        f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)",
    ])
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    line = [x for x in r.stderr.splitlines() if x.startswith("HEAVY=")]
    return [m for m in line[-1][6:].split(",") if m] if line else ["?"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    n = ap.parse_args().runs
    results = {name: time_cmd(cmd, n) for name, cmd in COMMANDS.items()}
    floor = results[next(iter(COMMANDS))]
    print(f"{'command':48} {'median s':>9} {'x floor':>8}  heavy imports")
    for name, secs in results.items():
        heavy = "" if name.startswith("floor") else (",".join(heavy_imports(COMMANDS[name][3:])) or "none")
        print(f"{name:48} {secs:9.3f} {secs / floor:8.2f}  {heavy}")
    print(f"(median of {n} runs; target: under 0.3 s each on the dev machine)")


if __name__ == "__main__":
    main()
