"""Loopback ports for the servers a test starts (webapps, nginx, sshd, git)."""

import socket


def free_port():
    """A loopback port nobody listens on (for now: the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(count, taken=()):
    """``count`` distinct loopback ports nobody listens on, none of them in ``taken``."""
    found = []
    while len(found) < count:
        port = free_port()
        if port not in found and port not in taken:
            found.append(port)
    return found
