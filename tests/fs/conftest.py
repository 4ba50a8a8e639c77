"""A host export with a sibling "outside" directory that nothing may ever reach."""

from pathlib import Path

import pytest

from ninep.fs.backend import Credentials
from ninep.fs.host import HostFilesystem


@pytest.fixture
def outside(tmp_path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret").write_bytes(b"host secret\n")
    return path


@pytest.fixture
def export(tmp_path, outside) -> Path:
    path = tmp_path / "export"
    path.mkdir()
    path.chmod(0o777)
    (path / "d").mkdir()
    (path / "d" / "f").write_bytes(b"inside\n")
    return path


@pytest.fixture
async def hostfs(export):
    fs = HostFilesystem(str(export))
    yield fs
    await fs.aclose()


@pytest.fixture
async def root(hostfs):
    file = await hostfs.attach("", Credentials(None, None))
    yield file
    await file.close()
