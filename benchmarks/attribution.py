"""Attribution quality on the labelled corpus of real log excerpts (prints figures; not a test).

tests/data/logs/LABELS.tsv gives, for each excerpt, the expected anomaly, component, action and (where
the excerpt names it) the node or rank to blame. Every excerpt goes through the same engine as
`ajr analyze` and the figures are:
  action accuracy     predicted action == expected action, over all excerpts
  EXCLUDE precision   of the excerpts ajr would exclude a node for, how many should exclude
  STOP precision      of the excerpts ajr would stop the job for, how many should stop
  component accuracy  predicted component == expected, over excerpts with an expected component
Targets (issue 5): 0.90 / 0.95 / 0.95 / 0.80.

    python benchmarks/attribution.py [--verbose]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from ajr_supervisor.analysis import analyze_lines
from ajr_supervisor.rules import RuleSet

LOGS = Path(__file__).resolve().parents[1] / "tests" / "data" / "logs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--verbose", action="store_true", help="print every excerpt that disagrees")
    args = ap.parse_args()
    rules = RuleSet.load()
    rows = list(csv.DictReader((LOGS / "LABELS.tsv").open(), delimiter="\t"))
    action_ok = comp_total = comp_ok = 0
    excl_pred = excl_ok = stop_pred = stop_ok = 0
    misses = []
    for row in rows:
        lines = [ln for ln in (LOGS / row["file"]).read_text().splitlines() if not ln.startswith("# ")]
        got = analyze_lines(lines, rules).to_dict()
        want_action = row["action"]
        action_ok += got["action"] == want_action
        if got["action"] == "EXCLUDE_NODE_AND_REQUEUE":
            excl_pred += 1
            excl_ok += want_action == "EXCLUDE_NODE_AND_REQUEUE"
        if got["action"] == "STOP":
            stop_pred += 1
            stop_ok += want_action == "STOP"
        if row["component"] not in ("-", ""):
            comp_total += 1
            comp_ok += got["component"] == row["component"]
        if got["action"] != want_action or (row["component"] not in ("-", "") and got["component"] != row["component"]):
            misses.append((row["file"], f"{row['action']}/{row['component']}", f"{got['action']}/{got['component']}"))

    def ratio(a: int, b: int) -> str:
        return f"{a / b:.2f} ({a}/{b})" if b else "n/a (0 predicted)"

    print(f"labelled excerpts: {len(rules and rows)} ({sum(r['action'] == 'NONE' for r in rows)} healthy), "
          f"rules: {len(rules.rules)}, engine: {rules.engine}")
    print(f"action accuracy     {ratio(action_ok, len(rows)):>16}   target 0.90")
    print(f"EXCLUDE precision   {ratio(excl_ok, excl_pred):>16}   target 0.95")
    print(f"STOP precision      {ratio(stop_ok, stop_pred):>16}   target 0.95")
    print(f"component accuracy  {ratio(comp_ok, comp_total):>16}   target 0.80")
    if args.verbose or misses:
        print(f"\ndisagreements ({len(misses)}): file, expected action/component, got")
        for m in misses:
            print(f"  {m[0]:<48} {m[1]:<40} {m[2]}")


if __name__ == "__main__":
    main()
