"""ninep: a 9P2000.L file server, client and library on trio."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so that ``import ninep.protocol`` never imports trio.
    if name == "serve":
        from .server import serve

        return serve
    raise AttributeError(f"module 'ninep' has no attribute {name!r}")
