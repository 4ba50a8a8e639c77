"""A static tree, served: ``python examples/hello.py --listen tcp://127.0.0.1:5640``."""
import argparse
import trio
import ninep
from ninep.fs.synthetic import Directory, StaticFile, Symlink

tree = Directory({
    "hello": StaticFile(b"hello, world\n"),
    "docs": {"README": "Served from a Python dict by ninep.\n"},  # dict: a directory
    "greeting": Symlink("hello"),
})

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="tcp://127.0.0.1:5640")
    try:
        trio.run(ninep.serve, tree, parser.parse_args().listen)
    except* KeyboardInterrupt:  # Ctrl-C: stop without a traceback
        pass
