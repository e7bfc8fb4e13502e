"""examples/incremental.py: the four runs of "process only what changed", each in a
fresh process, and which bodies ran each time (issue: incremental pipelines)."""

import os
import subprocess
import sys

from conftest import REPO


def test_four_runs_in_fresh_processes_run_only_what_changed(repo_env, tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "examples", "incremental.py")],
                          cwd=tmp_path, env=repo_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("run ")]
    assert len(lines) == 4, proc.stdout
    ran = [line.split("ran ", 1)[1].split("  ->", 1)[0] for line in lines]
    assert ran == ["listing, parse x3, report",  # first
                   "listing",                    # nothing changed: only the cache=False source
                   "listing, parse x1, report",  # a new file that sorts first: positions shift
                   "listing, parse x1, report"]  # a changed file
    totals = [line.rsplit("'total': ", 1)[1].rstrip("}") for line in lines]
    assert totals == ["21.0", "21.0", "31.0", "61.0"]
