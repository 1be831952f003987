"""Turn a pytest-benchmark JSON file into a table of speed ratios.

Within each benchmark group, tests named ``test_fastlm*`` are fastlm's; every other test in the group is a
baseline measured in the same run. Each row gives a baseline's mean time over fastlm's (higher is better).

    python -m pytest bench --benchmark-json=bench.json && python bench/report.py bench.json
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict


def ratio_table(path: str) -> str:
    with open(path) as f:
        runs = json.load(f)["benchmarks"]
    groups: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        groups[run["group"] or run["name"]].append(run)
    lines = ["| group | fastlm | mean (ms) | baseline | mean (ms) | speed-up |", "|---|---|---|---|---|---|"]
    for group, members in groups.items():
        ours = [m for m in members if m["name"].startswith("test_fastlm")]
        others = [m for m in members if not m["name"].startswith("test_fastlm")]
        for mine in ours:
            t = mine["stats"]["mean"]
            extra = "".join(f" {k}={v:.1f}" for k, v in mine.get("extra_info", {}).items()
                            if isinstance(v, (int, float)))
            for base in others or [None]:
                if base is None:
                    lines.append(f"| {group} | {mine['name']}{extra} | {t * 1e3:.3f} | — | — | — |")
                    continue
                b = base["stats"]["mean"]
                lines.append(f"| {group} | {mine['name']}{extra} | {t * 1e3:.3f} | {base['name']} | "
                             f"{b * 1e3:.3f} | {b / t:.1f}× |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python {sys.argv[0]} BENCHMARK_JSON")
    print(ratio_table(sys.argv[1]))
