"""A user-space TCP latency proxy for the benchmark (loopback only).

    python bench/latency_proxy.py --target-port 2222 --rtt-ms 50 [--listen-port 0]

Listens on 127.0.0.1, forwards every connection to 127.0.0.1:TARGET and delays each
direction by RTT/2: every chunk read is stamped with its arrival time and written to the
other side no earlier than stamp + RTT/2. Chunks of one direction go through one FIFO, so
byte order is preserved, and the delay is applied per chunk, not per round trip, so a
stream keeps its throughput (up to QUEUE_CHUNKS x READ_SIZE bytes in flight per direction;
past that the reader waits: the queues are bounded). Half-closes (EOF) are forwarded after
the same delay.

On loopback the kernel completes the TCP handshake at once; on a real link a connect costs
one RTT before any byte moves. To stand for that, the upstream connection is opened one RTT
after the client's connection is accepted (``--no-handshake-delay`` turns this off).

Prints ``PORT <n>`` on stdout once listening, then serves until SIGTERM/SIGINT. On exit it
prints one JSON line with its counters (connections, bytes each way, errors).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys

READ_SIZE = 65536
QUEUE_CHUNKS = 256         # per direction: 256 x 64 KiB = 16 MiB in flight at most
LOOPBACK = "127.0.0.1"


class Counters:
    def __init__(self) -> None:
        self.connections = 0
        self.active = 0
        self.peak_active = 0
        self.up_bytes = 0
        self.down_bytes = 0
        self.errors = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float,
                counters: Counters, direction: str) -> None:
    """Copy reader → writer, each chunk delivered ``delay`` seconds after it arrived."""
    loop = asyncio.get_running_loop()
    queue: "asyncio.Queue[tuple]" = asyncio.Queue(maxsize=QUEUE_CHUNKS)

    async def receive() -> None:
        try:
            while True:
                data = await reader.read(READ_SIZE)
                await queue.put((loop.time() + delay, data))
                if not data:
                    return
        except (ConnectionError, OSError):
            await queue.put((loop.time() + delay, b""))

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                try:
                    if writer.can_write_eof():
                        writer.write_eof()
                except (ConnectionError, OSError):
                    pass
                return
            if direction == "up":
                counters.up_bytes += len(data)
            else:
                counters.down_bytes += len(data)
            writer.write(data)
            await writer.drain()

    rx = asyncio.ensure_future(receive())
    try:
        await deliver()
    finally:
        rx.cancel()
        try:
            await rx
        except (asyncio.CancelledError, Exception):
            pass


async def _handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, target_port: int,
                  delay: float, handshake: float, counters: Counters) -> None:
    counters.connections += 1
    counters.active += 1
    counters.peak_active = max(counters.peak_active, counters.active)
    upstream_w = None
    try:
        if handshake > 0:
            await asyncio.sleep(handshake)
        upstream_r, upstream_w = await asyncio.wait_for(
            asyncio.open_connection(LOOPBACK, target_port), timeout=30)
        for w in (client_w, upstream_w):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up = asyncio.ensure_future(_pump(client_r, upstream_w, delay, counters, "up"))
        down = asyncio.ensure_future(_pump(upstream_r, client_w, delay, counters, "down"))
        done, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_EXCEPTION)
        for task in pending:  # one side failed: the other cannot finish either
            task.cancel()
        for task in done | pending:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except (ConnectionError, OSError):
                counters.errors += 1
    except (ConnectionError, OSError, asyncio.TimeoutError):
        counters.errors += 1
    except asyncio.CancelledError:  # shutting down: close quietly
        pass
    finally:
        counters.active -= 1
        for w in (client_w, upstream_w):
            if w is not None:
                w.close()


async def serve(listen_port: int, target_port: int, rtt_ms: float, handshake_delay: bool) -> Counters:
    counters = Counters()
    delay = rtt_ms / 2000.0
    handshake = rtt_ms / 1000.0 if handshake_delay else 0.0
    server = await asyncio.start_server(
        lambda r, w: _handle(r, w, target_port, delay, handshake, counters),
        LOOPBACK, listen_port, backlog=4096, limit=READ_SIZE)
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    return counters


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target-port", type=int, required=True, help="sshd port on 127.0.0.1")
    ap.add_argument("--listen-port", type=int, default=0, help="port to listen on (0: any free port)")
    ap.add_argument("--rtt-ms", type=float, required=True, help="round-trip time to add (each way: half)")
    ap.add_argument("--no-handshake-delay", action="store_true",
                    help="do not charge one RTT for the TCP handshake before connecting upstream")
    args = ap.parse_args(argv)
    counters = asyncio.run(serve(args.listen_port, args.target_port, args.rtt_ms, not args.no_handshake_delay))
    print(json.dumps(counters.as_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
