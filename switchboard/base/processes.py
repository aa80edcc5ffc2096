"""Small OS helpers shared by the supervisor, the benchmarks and the tests."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port nothing is bound to right now (TCP by default, ``socket.SOCK_DGRAM``: UDP)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


SIP_PORTS = range(20000, 32000)
"""Below Linux's ephemeral range (32768+), where outgoing connections take their ports."""


def free_sip_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP (SIP listens on both), outside the ephemeral range:
    a port the kernel handed out for UDP may meanwhile be taken by an outgoing TCP
    connection of another process, and SIP's TCP listener then fails to start."""
    for port in random.sample(SIP_PORTS, 200):
        try:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                with socket.socket(socket.AF_INET, kind) as sock:
                    sock.bind((host, port))
        except OSError:
            continue
        return port
    raise OSError(f"no port free for UDP and TCP in {SIP_PORTS} on {host}")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (exited processes not yet reaped, zombies, do not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (Linux /proc)."""
    found: set[int] = set()
    pending = [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    pending.append(child)
    return found


def process_tree_cpu_s(pid: int, *, command_has: str = "") -> float:
    """CPU seconds (user + system) used so far by ``pid`` and all its descendants (only
    those whose command line contains ``command_has``, when given)."""
    ticks = float(os.sysconf("SC_CLK_TCK"))
    total = 0.0
    for current in {pid, *descendants(pid)}:
        try:
            if command_has and command_has.encode() not in Path(
                    f"/proc/{current}/cmdline").read_bytes():
                continue
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total
