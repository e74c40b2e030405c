"""Who holds a lease: this process, named so that another process can tell whether it is gone.

A holder is ``host|pid|start``: the host's name, the process id, and a marker of when the
process started (on Linux its start time in clock ticks since boot, from ``/proc``), so a pid
the system has given to a new process since is not mistaken for the holder. A holder on this
host whose process is gone (or a zombie, or a new process under the same pid) holds nothing;
a holder on another host cannot be checked: its lease is short, renewed while it lives, and
runs out within seconds once it dies.
"""

from __future__ import annotations

import functools
import os
import socket

__all__ = ["this_holder", "holder_is_gone"]


def _start_marker(pid: int) -> str:
    """When process ``pid`` started ("" where it cannot be read); "Z" for a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return ""
    fields = stat.rpartition(")")[2].split()  # the name, in parentheses, may hold spaces
    if len(fields) < 20:
        return ""
    if fields[0] in ("Z", "X"):
        return "Z"
    return fields[19]  # starttime: field 22 of stat, the 20th after the name


@functools.cache
def _host() -> str:
    return socket.gethostname().replace("|", "_")


def this_holder() -> str:
    """This process, as a lease's holder."""
    pid = os.getpid()
    return f"{_host()}|{pid}|{_start_marker(pid)}"


def holder_is_gone(holder: str | None) -> bool:
    """True when ``holder`` is a process of this host that no longer runs (dead, a zombie, or
    its pid now another process's); False when it runs, or cannot be checked (another host,
    or a lease written before holders were recorded)."""
    if not holder:
        return False
    host, _, rest = holder.partition("|")
    pid_text, _, start = rest.partition("|")
    if host != _host() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return holder != this_holder()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, someone else's
    except OSError:
        return False
    now = _start_marker(pid)
    if now == "Z":
        return True
    return bool(start and now and now != start)
