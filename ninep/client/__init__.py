"""An async (trio) 9P2000.L client sharing the server's codec.

    async with ninep.client.connect("tcp://127.0.0.1:5640", aname="/srv/export",
                                    uname="root") as client:
        data = await client.root.read_file("etc/hostname")
        for entry in await client.root.listdir("etc"):
            print(entry.name)

Layers: ``mux`` (tags, fids, the reader task, Tflush on cancellation), ``operations``
(``Client``: one method per 9P2000.L request, fids in, reply fields out),
``remote_file`` (``RemoteFile``: a fid with path-taking helpers), ``connect`` (URLs,
streams, the session handshake). See docs/client.md.
"""

from ..protocol.codec import ProtocolError
from .connect import DEFAULT_MSIZE, connect, open_client, open_stream, parse_url
from .errors import ConnectionLost, VersionError, error_from_reply
from .operations import Client
from .remote_file import FileOpening, RemoteFile, split_path

__all__ = [
    "DEFAULT_MSIZE",
    "Client",
    "ConnectionLost",
    "FileOpening",
    "ProtocolError",
    "RemoteFile",
    "VersionError",
    "connect",
    "error_from_reply",
    "open_client",
    "open_stream",
    "parse_url",
    "split_path",
]
