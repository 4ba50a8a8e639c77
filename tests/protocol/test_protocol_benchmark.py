"""benchmarks/codec.py runs and reports every case.

No timing is asserted here: a busy or slow machine would fail it. How fast the codec is
belongs to `make bench` (benchmarks/codec.py) and docs/performance.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "codec.py"


def test_json_report_has_the_headline_and_every_case():
    result = subprocess.run([sys.executable, str(BENCHMARK), "--json", "--budget", "0.002"],
                            capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(result.stdout)
    cases = [row["case"] for row in report["rows"]]
    assert cases == ["walk (3 names)", "getattr", "readdir (50 entries)", "clunk", "lopen",
                     "read (1 MiB)", "write (1 MiB)"]
    metadata = [row["fast_pair_us"] for row in report["rows"][:5]]
    assert report["pair_us_max"] == max(metadata)
    for row in report["rows"]:
        assert row["fast_pair_us"] > 0 and row["interpreted_pair_us"] > 0


def test_the_timing_check_lives_in_the_benchmark():
    """`--max-pair-us` is where a time limit is asserted (on a quiet machine, by hand or
    in a benchmark job); here only that it fails and says why, with an impossible limit."""
    result = subprocess.run([sys.executable, str(BENCHMARK), "--json", "--budget", "0.002",
                             "--max-pair-us", "0.000001"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("pair_us_max ") and "> 1e-06 us" in result.stderr
