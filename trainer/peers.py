"""Waiting for the other workers of a multi-worker run, for a bounded time.

TensorFlow's `MultiWorkerMirroredStrategy` waits for every worker of TF_CONFIG inside its
constructor, in C++, without a word and without end, and catches SIGTERM while it does
(its preemption notifier), so a chief whose worker never starts can only be killed.
So before the strategy is made, every process meets the others on the ports TF_CONFIG
gives them: it listens on its own port (without accepting: the kernel completes a peer's
connection), connects to each peer's port until all answer, says on stderr whom it is
still waiting for, and gives up after `timeout` seconds with one line naming them. Then
it closes its listener, and TensorFlow binds the same port. A peer that has already gone
on to start its TensorFlow server answers on the same port too.

Pure Python sockets; no TensorFlow here.
"""

from __future__ import annotations

import socket
import sys
import time
from typing import Callable, Sequence

from pipelines.errors import UserError

POLL_SECONDS = 0.5
PROGRESS_SECONDS = 10.0
CONNECT_SECONDS = 1.0


def split_address(address: str) -> tuple[str, int]:
    """"host:port" (or "[v6]:port") -> (host, port); UserError when it is not one."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"TF_CONFIG: {address!r} is not host:port")
    return host.strip("[]"), int(port)


def _answers(address: str) -> bool:
    try:
        with socket.create_connection(split_address(address), timeout=CONNECT_SECONDS):
            return True
    except OSError:
        return False


def _listen(address: str) -> socket.socket:
    _, port = split_address(address)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", port))
    except OSError as error:
        listener.close()
        raise UserError(f"TF_CONFIG: this process's port {port} ({address}) is in use "
                        f"({error.strerror}); another run on this machine?") from None
    listener.listen(64)
    return listener


def wait_for_peers(addresses: Sequence[str], names: Sequence[str], own: int,
                   timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
    """Returns once every other process of the cluster answers on its port.

    Args:
      addresses: "host:port" of every process, in rank order.
      names: how to call each in messages ("chief 0", "worker 1").
      own: this process's rank.
      timeout: seconds to wait before giving up (UserError naming those missing).
    """
    listener = _listen(addresses[own])
    try:
        start = clock()
        last_said = None
        waiting = [rank for rank in range(len(addresses)) if rank != own]
        while True:
            waiting = [rank for rank in waiting if not _answers(addresses[rank])]
            if not waiting:
                return
            missing = ", ".join(f"{names[rank]} at {addresses[rank]}" for rank in waiting)
            now = clock()
            if now - start >= timeout:
                raise UserError(f"{names[own]}: gave up after {timeout:g} s waiting for "
                                f"{missing} (is it running, and its port reachable? "
                                "--peer-timeout sets the wait)")
            if last_said is None or now - last_said >= PROGRESS_SECONDS:
                print(f"{names[own]}: waiting for {missing} ({now - start:.0f} of "
                      f"{timeout:g} s)", file=sys.stderr, flush=True)
                last_said = now
            time.sleep(POLL_SECONDS)
    finally:
        listener.close()
