"""Free TCP ports on 127.0.0.1, for the demo's search service and the tests' Ray nodes."""
from __future__ import annotations

import contextlib
import socket


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free on 127.0.0.1 now. All are held open until all are
    picked: closed one by one, the OS may hand the same port out twice (it did,
    in CI: two Ray components given one port)."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(n):
            s = held.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
        return ports


def free_port() -> int:
    return free_ports(1)[0]
