"""Which TCP sockets a process tree holds, read from /proc: where it listens, whom it talks to.

The benchmark starts third-party servers (the peers); before it sends them a request it checks
that every socket they listen on is a loopback address, and after the run that they opened no
connection to anything but loopback. A socket belongs to a process when one of the process's
descriptors links to ``socket:[INODE]``; /proc/net/tcp and /proc/net/tcp6 map that inode to its
addresses and state (they describe this network namespace, the one the children run in).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from dataclasses import dataclass

_LISTEN = "0A"  # TCP_LISTEN in the kernel's state numbering


@dataclass(frozen=True)
class TcpSocket:
    local: str
    local_port: int
    remote: str
    remote_port: int
    listening: bool

    @property
    def local_is_loopback(self) -> bool:
        return _is_loopback(self.local)

    @property
    def remote_is_loopback(self) -> bool:
        return _is_loopback(self.remote)


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _decode(hex_addr: str) -> tuple[str, int]:
    """``0100007F:1F90`` -> ("127.0.0.1", 8080): the kernel prints each 32-bit word in host order."""
    addr_hex, port_hex = hex_addr.split(":")
    raw = bytes.fromhex(addr_hex)
    # Each 4-byte word is in the machine's byte order; flip words back to network order.
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)) \
        if sys.byteorder == "little" else raw
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, words), int(port_hex, 16)


def _socket_inodes(pids: list[int]) -> set[str]:
    inodes: set[str] = set()
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # exited meanwhile
            continue
        for fd in fds:
            try:
                link = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    return inodes


def tcp_sockets(pids: list[int]) -> list[TcpSocket]:
    """Every TCP socket (IPv4 and IPv6) that one of ``pids`` holds a descriptor of."""
    inodes = _socket_inodes(pids)
    out: list[TcpSocket] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:  # no IPv6 in this kernel
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[9] not in inodes:
                continue
            local, lport = _decode(fields[1])
            remote, rport = _decode(fields[2])
            out.append(TcpSocket(local, lport, remote, rport, fields[3] == _LISTEN))
    return out
