"""CI's time box for the fuzz harnesses (fuzz/, docs/fuzzing.md).

Always: every corpus file (the seeds and every crash ever found, which are added to the
corpus) replays through its harness with no error -- the regression tests.
With atheris installed (the `fuzz` extra; clang for the C harness): each harness fuzzes
for NINEP_FUZZ_SECONDS. A crash, timeout or OOM fails the test; the reproducer is kept in
NINEP_FUZZ_ARTIFACTS (default build/fuzz-artifacts/<harness>/ in the checkout) and its
bytes are printed in the failure, so a CI log alone is enough to reproduce it."""

import base64
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fuzz.cmdline
import fuzz.codec
import fuzz.config
import fuzz.session
import fuzz.vsock
from fuzz.driver import replay

PYTHON_HARNESSES = {"codec": fuzz.codec, "session": fuzz.session, "config": fuzz.config,
                    "vsock": fuzz.vsock}
HARNESSES = [*PYTHON_HARNESSES, "cmdline"]
FUZZ_SECONDS = int(os.environ.get("NINEP_FUZZ_SECONDS", "20"))
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("NINEP_FUZZ_ARTIFACTS", ROOT / "build" / "fuzz-artifacts"))


def _need_clang():
    if fuzz.cmdline.compiler() is None:
        pytest.skip("no clang (apt-get install clang libclang-rt-14-dev)")


@pytest.mark.parametrize("name", HARNESSES)
def test_corpus_replays_clean(name):
    if name == "cmdline":
        _need_clang()
        assert fuzz.cmdline.replay_corpus() > 0
        return
    assert replay(name, PYTHON_HARNESSES[name].one_input) > 0  # a missing corpus is a failure


def time_box(module: str, corpus: Path, work: Path, artifacts: Path, seconds: int,
             env: dict | None = None) -> tuple[int, list[Path], str]:
    """Fuzz one harness for `seconds`; (exit status, reproducers saved, output tail)."""
    artifacts.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    before = set(artifacts.iterdir())
    run = subprocess.run(
        [sys.executable, "-m", module, f"-max_total_time={seconds}", "-timeout=10",
         "-rss_limit_mb=1024", f"-artifact_prefix={artifacts}/", str(work), str(corpus)],
        cwd=ROOT, capture_output=True, text=True, env=env,
        timeout=seconds + 600)  # instrumenting takes a minute on a busy machine
    found = sorted(set(artifacts.iterdir()) - before)
    return run.returncode, found, run.stderr[-4000:]


def describe(module: str, found: list[Path], returncode: int, output: str) -> str:
    lines = [f"{module} failed (rc {returncode}); reproducers saved:"]
    for path in found:
        data = path.read_bytes()
        lines.append(f"  {path} ({len(data)} bytes), replay: python -m {module} {path}")
        lines.append(textwrap.indent(base64.encodebytes(data[:3000]).decode(), "    base64 "))
    lines.append("Copy each into fuzz/corpus/<harness>/ (a regression test from then on) and fix it.")
    return "\n".join(lines) + "\n" + output


@pytest.mark.parametrize("name", HARNESSES)
def test_fuzz_time_box(name, tmp_path):
    if name == "cmdline":
        _need_clang()
    else:
        pytest.importorskip("atheris", reason="the `fuzz` extra is not installed")
    module = f"fuzz.{name}"
    returncode, found, output = time_box(module, ROOT / "fuzz" / "corpus" / name,
                                         tmp_path / "corpus", ARTIFACTS / name, FUZZ_SECONDS)
    assert returncode == 0 and not found, describe(module, found, returncode, output)


PLANTED = '''
def one_input(data):
    if len(data) > 1 and data[:1] == b"N":  # the seed is b"N": one mutation away
        raise RuntimeError("planted defect")

if __name__ == "__main__":
    from fuzz.driver import run
    run("planted", one_input)
'''


def test_a_crash_fails_the_time_box_and_keeps_its_reproducer(tmp_path):
    """The time box's own check: a harness with a planted defect fails it at once."""
    pytest.importorskip("atheris", reason="the `fuzz` extra is not installed")
    (tmp_path / "planted.py").write_text(PLANTED)
    corpus = tmp_path / "seeds"
    corpus.mkdir()
    (corpus / "seed").write_bytes(b"N")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    returncode, found, output = time_box("planted", corpus, tmp_path / "work",
                                         tmp_path / "artifacts", 60, env)
    assert returncode != 0 and len(found) == 1, output
    assert found[0].read_bytes()[:1] == b"N" and len(found[0].read_bytes()) > 1
    message = describe("planted", found, returncode, output)
    assert str(found[0]) in message and base64.b64encode(found[0].read_bytes()).decode()[:8] in message


# Found by the config harness: an empty value or an unknown tag escaped as a YAMLError.
@pytest.mark.parametrize("text", ["exports: {a: {path: /a}}\nmax_fids: ",
                                  "listen:\n  -\r\nexports: {a: {path: /a}}",
                                  "exports: {a: {path: /a, read_only: }}",
                                  "listen:\n !- tcp://127.0.0.1:5640\nexports: {a: {path: /a}}"])
def test_empty_config_values_are_config_errors(text):
    from ninep.config import ConfigError, parse_config
    with pytest.raises(ConfigError):
        parse_config(text)


def test_trace_lines_become_the_messages_that_were_traced():
    """fuzz/trace_seeds.py reads ninepd --trace back (the kernel-trace seeds depend on it)."""
    from fuzz.trace_seeds import parse_line, seeds_from
    from ninep.protocol import messages as m
    from ninep.server.trace import describe
    sent = [m.Tversion(0xFFFF, 512000, "9P2000.L"), m.Tattach(0, 0, 0xFFFFFFFF, "nobody", "", 0xFFFFFFFF),
            m.Twalk(1, 0, 1, ("etc", "it's")), m.Tsetattr(2, 1, 0x1A0, 0, 0, 0, 0, 0, 0, (1 << 64) - 5, 7),
            m.Tlock(3, 1, 1, 0, 0, 10, 5, "client"), m.Twrite(4, 1, 0, b"0123456789abcdefXYZ")]
    lines = [f"2026-12-07 ninepd INFO unix:///s#2 <- {describe(msg)}" for msg in sent]
    got = [parse_line(line) for line in lines + ["ninepd INFO unix:///s#2 -> Rclunk tag=1"]]
    assert [g[1] for g in got[:5]] == sent[:5] and got[-1] is None
    assert got[5][1].data == b"0123456789abcdef\0\0\0"  # the log keeps 16 bytes and the length
    sessions, frames = seeds_from(lines)
    assert len(sessions) == 1 and len(frames) == 6
