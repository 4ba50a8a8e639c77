"""``backend`` runs each conformance test once per registered backend; ``root`` is an
attached root File, closed afterwards."""

import pytest

from .backends import FACTORIES, Backend


@pytest.fixture(params=sorted(FACTORIES))
def backend(request, tmp_path) -> Backend:
    scratch = tmp_path / "export"
    scratch.mkdir()
    return FACTORIES[request.param](scratch)


@pytest.fixture
async def root(backend):
    file = await backend.filesystem.attach("", backend.creds)
    yield file
    await file.close()
    await backend.filesystem.aclose()
