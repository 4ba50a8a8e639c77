"""A trio Listener whose connections are guest vsock streams served by our own device."""

from __future__ import annotations

import logging

import trio

from .device import VsockDevice, VsockStream, serve_session

log = logging.getLogger("ninep.vhost")

ACCEPT_BACKLOG = 64  # guest streams waiting for the server's accept loop


class VhostUserVsockListener(trio.abc.Listener[VsockStream]):
    """Serves QEMU's vhost-user connections on ``sock`` (bound and listening) and hands
    each guest stream to ``ports`` to ``accept()``.

    The device runs as a trio system task started here, so it lives as long as the
    listener, not as long as whichever task happened to open it; ``aclose`` stops it.
    """

    def __init__(self, sock: trio.socket.SocketType, *, guest_cid: int, ports,
                 forward_prefix: str | None = None) -> None:
        self.socket = sock
        self.guest_cid = guest_cid
        self.ports = set(ports)
        self.forward_prefix = forward_prefix
        self._send, self._accepted = trio.open_memory_channel(ACCEPT_BACKLOG)
        self._scope = trio.CancelScope()
        self.sessions = 0  # QEMU connections served so far (tests, logs)
        trio.lowlevel.spawn_system_task(self._run, name=f"vhost-user-vsock cid {guest_cid}")

    async def _run(self) -> None:
        with self._scope:
            try:
                while True:
                    qemu, _ = await self.socket.accept()
                    self.sessions += 1
                    log.info("vhost-user-vsock: QEMU connected (guest cid %d)", self.guest_cid)
                    device = VsockDevice(self.guest_cid, self.ports, self._send, self.forward_prefix)
                    with qemu:
                        try:
                            await serve_session(qemu, device)
                        except Exception:
                            # A defect met in one QEMU session costs that guest its device,
                            # not ninepd its listener: the socket takes the next QEMU.
                            log.exception("vhost-user-vsock: guest cid %d: session failed",
                                          self.guest_cid)
                    log.info("vhost-user-vsock: QEMU left (guest cid %d)", self.guest_cid)
            except OSError as exc:
                log.error("vhost-user-vsock: guest cid %d: cannot accept QEMU: %s", self.guest_cid, exc)
            finally:
                self._send.close()

    async def accept(self) -> VsockStream:
        try:
            return await self._accepted.receive()
        except trio.EndOfChannel:
            raise trio.ClosedResourceError("the vhost-user-vsock device stopped") from None

    async def aclose(self) -> None:
        self._scope.cancel()
        self.socket.close()
        await trio.lowlevel.checkpoint()
