"""CPU accounting of a process tree, all of it or the processes a command line names."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from switchboard.base.processes import SIP_PORTS, free_sip_port, process_tree_cpu_s

BUSY = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n" \
       "import sys; sys.stdin.read()"


def test_cpu_of_the_children_a_command_line_names() -> None:
    child = subprocess.Popen([sys.executable, "-c", BUSY, "busy-marker"],
                             stdin=subprocess.PIPE)
    try:
        while process_tree_cpu_s(os.getpid(), command_has="busy-marker") < 0.3:
            assert child.poll() is None
        named = process_tree_cpu_s(os.getpid(), command_has="busy-marker")
        nobody = process_tree_cpu_s(os.getpid(), command_has="no-such-command")
        everything = process_tree_cpu_s(os.getpid())
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)

    assert named >= 0.3 and nobody == 0.0
    assert everything >= named


def test_a_sip_port_is_free_for_udp_and_tcp_below_the_ephemeral_range() -> None:
    port = free_sip_port()

    assert port in SIP_PORTS
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.bind(("127.0.0.1", port))
