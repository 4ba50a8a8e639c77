"""``python -m ninep.client``: each command against ninep's own server over TCP."""

import io
import os
import stat
import subprocess
import sys
from functools import partial

import pytest

from ninep.client.__main__ import Streams, run
from ninep.fs.host import HostFilesystem
from ninep.server import serve


@pytest.fixture
async def served_dir(nursery, tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "hostname").write_bytes(b"guest\n")
    (tmp_path / "etc" / "ln").symlink_to("hostname")
    server = await nursery.start(partial(serve, HostFilesystem(str(tmp_path)),
                                         "tcp://127.0.0.1:0", grace_period=0.5))
    yield server.addresses[0], tmp_path
    server.shutdown()


async def cli(*argv, stdin=b""):
    streams = Streams(io.StringIO(), io.StringIO(), io.BytesIO(stdin))
    status = await run(list(argv), streams)
    return status, streams.out.getvalue(), streams.err.getvalue()


async def test_ls_cat_stat_df(served_dir):
    url, host = served_dir
    assert await cli(url, "ls") == (0, "etc/\n", "")
    assert await cli(url, "ls", "etc") == (0, "hostname\nln@\n", "")
    assert await cli(url, "cat", "etc/hostname") == (0, "guest\n", "")
    status, out, _ = await cli(url, "stat", "etc/hostname")
    mode = os.stat(host / "etc" / "hostname").st_mode
    assert status == 0 and out.startswith(stat.filemode(mode) + " ") and " size=6 " in out
    status, out, _ = await cli(url, "df")
    assert status == 0 and f"namelen={os.statvfs(host).f_namemax}" in out


async def test_put_mkdir_rm(served_dir):
    url, host = served_dir
    assert await cli(url, "mkdir", "new") == (0, "", "")
    assert await cli(url, "put", "new/file", stdin=b"from stdin") == (0, "", "")
    assert (host / "new" / "file").read_bytes() == b"from stdin"
    assert await cli(url, "rm", "new/file", "new") == (0, "", "")
    assert not (host / "new").exists()


async def test_errors_and_trace(served_dir):
    url, _ = served_dir
    status, _, err = await cli(url, "cat", "missing")
    assert (status, err) == (1, "cat missing: No such file or directory\n")
    status, _, err = await cli("tcp://127.0.0.1:1", "ls")
    assert status == 2 and err.startswith("tcp://127.0.0.1:1: ")
    status, _, err = await cli("-D", url, "ls")
    assert status == 0 and "-> Tversion(" in err and "<- Rreaddir(" in err


def test_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "ninep.client", "--help"],
                            capture_output=True, text=True, check=True)
    assert "ls" in result.stdout and "put" in result.stdout
