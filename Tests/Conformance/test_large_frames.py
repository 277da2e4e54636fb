"""Frames of any size through the relay: a WebSocket message sent as one frame, as Microsoft's SDKs send a
whole buffer, is passed on while it arrives, byte-exact, with the relay's memory bounded by its write
watermarks rather than by the frame."""
import asyncio
import hashlib
import os
import threading
import time

from websockets.asyncio.client import connect

import hc
from agents import rss
from test_conformance import dotnet_headers, next_control, open_listener

FRAME = 48 << 20
MEMORY_BOUND = 24 << 20


class PeakMemory:
    """Samples a process's resident memory every 10 ms until stopped; `growth` is peak minus start."""

    def __init__(self, pid):
        self.pid = pid
        self.start = rss(pid)
        self.peak = self.start
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, rss(self.pid))
            time.sleep(0.01)

    def stop(self):
        self.running = False
        self.thread.join()
        return self.peak - self.start


def test_a_48_mib_frame_crosses_the_relay_each_way_byte_exact_in_bounded_memory(relay):
    up, down = os.urandom(FRAME), os.urandom(FRAME)

    async def run():
        control, _ = await open_listener(relay)
        sender_task = asyncio.ensure_future(connect(
            "%s/$hc/hyco" % relay.ws, additional_headers=dotnet_headers(relay, "hyco"), max_size=None,
            ping_interval=None))
        _, accept = await next_control(control)
        rendezvous = await connect(accept["address"], max_size=None, ping_interval=None)
        sender = await sender_task
        # Warm up the tunnel so the baseline includes its buffers.
        await sender.send(b"x" * 100_000)
        assert await rendezvous.recv() == b"x" * 100_000
        growth = {}
        for name, source, sink, payload in (("up", sender, rendezvous, up), ("down", rendezvous, sender, down)):
            memory = PeakMemory(relay.process.pid)
            sending = asyncio.ensure_future(source.send(payload))
            received = await asyncio.wait_for(sink.recv(), 120)
            await sending
            growth[name] = memory.stop()
            assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest(), name
        await sender.close()
        await rendezvous.wait_closed()
        await control.close()
        return growth

    growth = asyncio.run(run())
    for name, grown in growth.items():
        assert grown < MEMORY_BOUND, "relay grew by %.1f MiB passing a 48 MiB frame %s" % (grown / 2**20, name)
    print("relay RSS growth per 48 MiB frame: up %.1f MiB, down %.1f MiB" % (growth["up"] / 2**20, growth["down"] / 2**20))
