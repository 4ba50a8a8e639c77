"""``backend`` runs each conformance test once per registered backend; ``root`` is an
attached root File, closed afterwards."""

import pytest

from .backends import FACTORIES, Backend


@pytest.fixture(params=sorted(FACTORIES))
def backend(request, tmp_path) -> Backend:
    """Skips here, in a plain fixture, for what ``@pytest.mark.needs(...)`` names and the
    backend lacks: a skip raised inside a trio test loses its reason (pytest-trio 0.8
    re-raises a bare skip), and the summary should say which capability was missing."""
    scratch = tmp_path / "export"
    scratch.mkdir()
    made = FACTORIES[request.param](scratch)
    for marker in request.node.iter_markers("needs"):
        for capability in marker.args:
            if not getattr(made.caps, capability):
                pytest.skip(f"{made.name} lacks {capability}")
    return made


@pytest.fixture
async def root(backend):
    file = await backend.filesystem.attach("", backend.creds)
    yield file
    await file.close()
    await backend.filesystem.aclose()
