"""How the demo generator codes prediabetes: per site, how many people it codes and how
many of them develop diabetes within two years of the code. Reads the generator's people
(``records.demo._People``) before any record is written, for the network's seed and
size; nothing is written.

    .venv/bin/python benchmarks/prediabetes_coding.py --people 20000 --seed 7

Development data only: these counts describe the synthetic generator, not a site.
"""

from __future__ import annotations

import argparse
from datetime import date

import numpy as np

from forewarn.records.demo import CHUNK_PEOPLE, NEVER, SITES, _day, _People, site_seed

TWO_YEARS = 730


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=20_000, help="people in the network")
    parser.add_argument("--seed", type=int, default=7, help="the network's seed")
    args = parser.parse_args()
    window = (_day(date(2015, 1, 1)), _day(date(2024, 12, 31)))
    total = sum(p.share for p in SITES.values())
    left = args.people
    print("| site | people | coded | coded share | coded with diabetes within two years | share |")
    print("|---|---:|---:|---:|---:|---:|")
    for i, (name, profile) in enumerate(SITES.items()):  # the split generate_network makes
        n = left if i == len(SITES) - 1 else max(1, round(args.people * profile.share / total))
        left -= n
        coded = progressed = 0
        for chunk, first in enumerate(range(0, n, CHUNK_PEOPLE)):
            size = min(CHUNK_PEOPLE, n - first)
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([site_seed(args.seed, name), chunk])))
            people = _People(rng, profile, size, window)
            has = people.prediabetes < NEVER
            later = people.t2d - people.prediabetes
            coded += int(has.sum())
            progressed += int((has & (later > 0) & (later <= TWO_YEARS)).sum())
        print(f"| {name} | {n:,} | {coded:,} | {coded / n:.3f} | {progressed:,} | {progressed / max(coded, 1):.2f} |")


if __name__ == "__main__":
    main()
