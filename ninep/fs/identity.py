"""Run a function as a guest's user: per-thread fsuid/fsgid and supplementary groups.

Linux keeps fsuid, fsgid and the group list per thread, so a worker thread can act as
uid 1000 while the event loop and other workers stay root. Changing fsuid from 0 to
non-zero also drops the filesystem capabilities (CAP_DAC_OVERRIDE, CAP_CHOWN, CAP_FOWNER,
...) for that thread, so the host kernel makes exactly the permission decisions it would
make for that user. Restoring fsuid 0 gives them back.

The group list is set with the raw syscall: glibc's setgroups() is process-wide (it
signals every thread), which would race with other guests' requests.
"""

from __future__ import annotations

import os
import pwd
from functools import lru_cache
from typing import Callable, TypeVar

from ..protocol.constants import NONUNAME
from . import hostsys
from .backend import Credentials

T = TypeVar("T")

_SERVER_GID = os.getegid()
_SERVER_GROUPS = tuple(os.getgroups())
NOBODY_GID = 65534


def server_is_root() -> bool:
    return os.geteuid() == 0


@lru_cache(maxsize=256)
def primary_gid(uid: int) -> int:
    """The passwd group of ``uid``, for attaches that name a uid but no gid."""
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return NOBODY_GID


def needs_switch(creds: Credentials) -> bool:
    """True when operations for ``creds`` must run under a switched identity: the
    server is root and the guest named a user other than the server's own."""
    if creds.uid is None or not server_is_root():
        return False
    gid = creds.gid if creds.gid is not None else primary_gid(creds.uid)
    return not (creds.uid == 0 and gid == _SERVER_GID)


@lru_cache(maxsize=1)
def _server_caps():
    """The capabilities every server thread has (threads inherit the process's)."""
    return hostsys.get_thread_caps()


def run_as(creds: Credentials, fn: Callable[..., T], *args) -> T:
    """Call ``fn(*args)`` in this thread as ``creds``, then restore the server identity.

    The identity is the calling thread's: run this in a worker thread, or on the
    event-loop thread only around code that cannot yield to other tasks.

    Besides fsuid/fsgid/groups, a non-root guest user runs with an empty *effective*
    capability set: setfsuid drops only the filesystem capabilities, and the user
    must not keep CAP_MKNOD (device nodes), CAP_SYS_ADMIN (trusted.* xattrs),
    CAP_SETFCAP (file capabilities) or CAP_LINUX_IMMUTABLE. If switching fails
    nothing runs: acting as root by mistake must never happen.
    """
    if creds.uid is None:
        raise ValueError("run_as needs a numeric uid")
    gid = creds.gid if creds.gid is not None else primary_gid(creds.uid)
    saved_caps = _server_caps()
    try:
        hostsys.set_thread_groups(creds.groups)
        hostsys.setfsgid(gid)
        hostsys.setfsuid(creds.uid)
        if hostsys.current_fsuid() != creds.uid or hostsys.current_fsgid() != gid:
            raise PermissionError(1, "could not switch to the guest's identity")
        if creds.uid != 0:
            (_, permitted_lo, inheritable_lo), (_, permitted_hi, inheritable_hi) = saved_caps
            hostsys.set_thread_caps(((0, permitted_lo, inheritable_lo),
                                     (0, permitted_hi, inheritable_hi)))
        return fn(*args)
    finally:
        _restore_server_identity(saved_caps)


def _restore_server_identity(saved_caps) -> None:
    """Capabilities first (restoring the group list needs CAP_SETGID); every step is
    tried even if one fails, then the first failure is raised."""
    failure: OSError | None = None
    for step, arg in ((hostsys.set_thread_caps, saved_caps), (hostsys.setfsuid, 0),
                      (hostsys.setfsgid, _SERVER_GID),
                      (hostsys.set_thread_groups, _SERVER_GROUPS)):
        try:
            step(arg)
        except OSError as exc:
            failure = failure or exc
    if failure is not None:
        raise failure


def credentials_for(uname: str, n_uname: int) -> Credentials:
    """Tattach identity from the host's user database (the server's default; the
    server core itself never reads it): n_uname names a uid (primary gid and groups
    from pwd); NONUNAME (the kernel's access=client attach, uname "nobody") means the
    server's own identity, left to the backend as uid None."""
    if n_uname == NONUNAME:
        return Credentials(uid=None, gid=None)
    try:
        entry = pwd.getpwuid(n_uname)
    except KeyError:
        return Credentials(uid=n_uname, gid=n_uname)
    try:
        groups = tuple(g for g in os.getgrouplist(entry.pw_name, entry.pw_gid) if g != entry.pw_gid)
    except OSError:
        groups = ()
    return Credentials(uid=n_uname, gid=entry.pw_gid, groups=groups)
