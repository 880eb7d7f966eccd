"""Wall time per stage of `forewarn demo`, from its own progress lines.

    python benchmarks/demo_stages.py --people 20000

Runs the demo in a fresh temporary folder (fresh network, fresh MLflow store, the
caller's Prefect home) and prints a Markdown table of seconds per stage and site,
plus the whole command's wall time and peak RSS of the process tree.
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

LINE = re.compile(r"forewarn \| (?P<stage>.+?) done in (?P<seconds>[0-9.]+) s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=20_000)
    args = parser.parse_args()
    forewarn = Path(sys.executable).with_name("forewarn")
    with tempfile.TemporaryDirectory(prefix="forewarn-bench-") as tmp:
        start = time.perf_counter()
        proc = subprocess.run(
            [str(forewarn), "demo", "--people", str(args.people), "--workdir", f"{tmp}/demo"],
            cwd=tmp, capture_output=True, text=True, check=True,
        )
        wall = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    seconds: dict[str, list[float]] = defaultdict(list)
    for line in proc.stderr.splitlines():
        m = LINE.search(line)
        if m:
            seconds[m["stage"]].append(float(m["seconds"]))
    print(f"forewarn demo --people {args.people:,}: wall {wall:.1f} s, peak RSS {peak_mb:,.0f} MB\n")
    print("Stages summed over sites, tasks and validation designs (featurize also runs for external,\n"
          "temporal and champion re-scoring):\n")
    print("| stage | calls | seconds |\n|---|---:|---:|")
    for stage, values in seconds.items():
        print(f"| {stage} | {len(values)} | {sum(values):.1f} |")
    accounted = sum(sum(v) for v in seconds.values())
    print(f"| Prefect, MLflow logging and registry, report rendering, imports (the rest) | | {wall - accounted:.1f} |")


if __name__ == "__main__":
    main()
