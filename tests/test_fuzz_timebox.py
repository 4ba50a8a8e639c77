"""CI's time box for the fuzz harnesses (fuzz/, docs/fuzzing.md).

Always: every corpus file (the seeds and every crash ever found, which are added to the
corpus) replays through its harness with no error -- the regression tests.
With atheris installed (the `fuzz` extra): each harness fuzzes for FUZZ_SECONDS; a crash
fails the test and names the reproducer, saved under the pytest tmp dir, to copy into
fuzz/corpus/<harness>/."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fuzz.codec
import fuzz.config
import fuzz.session
from fuzz.driver import replay

HARNESSES = {"codec": fuzz.codec, "session": fuzz.session, "config": fuzz.config}
FUZZ_SECONDS = int(os.environ.get("NINEP_FUZZ_SECONDS", "20"))
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", HARNESSES)
def test_corpus_replays_clean(name):
    assert replay(name, HARNESSES[name].one_input) > 0  # a missing corpus is a failure


@pytest.mark.parametrize("name", HARNESSES)
def test_fuzz_time_box(name, tmp_path):
    pytest.importorskip("atheris", reason="the `fuzz` extra is not installed")
    work = tmp_path / "corpus"
    work.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", f"fuzz.{name}", f"-max_total_time={FUZZ_SECONDS}",
         "-timeout=10", "-rss_limit_mb=1024", f"-artifact_prefix={tmp_path}/crash-",
         str(work), str(ROOT / "fuzz" / "corpus" / name)],
        cwd=ROOT, capture_output=True, text=True, timeout=FUZZ_SECONDS + 600)  # instrumenting takes a minute on a busy machine
    crashes = sorted(tmp_path.glob("crash-*")) + sorted(tmp_path.glob("timeout-*")) + \
        sorted(tmp_path.glob("oom-*"))
    assert run.returncode == 0 and not crashes, (
        f"fuzz.{name} failed (rc {run.returncode}); reproducers: {[str(c) for c in crashes]}\n"
        + run.stderr[-4000:])


# Found by the config harness: an empty value or an unknown tag escaped as a YAMLError.
@pytest.mark.parametrize("text", ["exports: {a: {path: /a}}\nmax_fids: ",
                                  "listen:\n  -\r\nexports: {a: {path: /a}}",
                                  "exports: {a: {path: /a, read_only: }}",
                                  "listen:\n !- tcp://127.0.0.1:5640\nexports: {a: {path: /a}}"])
def test_empty_config_values_are_config_errors(text):
    from ninep.config import ConfigError, parse_config
    with pytest.raises(ConfigError):
        parse_config(text)
