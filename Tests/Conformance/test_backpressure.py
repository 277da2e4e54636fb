"""Resource behaviour of the relay process under a slow reader: a 1 GiB stream toward a throttled
receiver must not pile up in the relay (back-pressure reaches the sender), and must still arrive whole."""
import hashlib
import os
import struct
import threading
import time

from websockets.sync.client import connect

import hc
from agents import rss

TOTAL = 1 << 30
FRAME = 256 * 1024


class FrameReader:
    """Reads server frames straight into a reusable buffer (no quadratic concatenation)."""

    def __init__(self, raw):
        self.sock = raw.sock
        self.pending = bytearray(raw.buffer)
        self.chunk = bytearray(FRAME + 16)

    def _exact(self, n):
        view = memoryview(self.chunk)[:n]
        taken = min(n, len(self.pending))
        view[:taken] = self.pending[:taken]
        del self.pending[:taken]
        while taken < n:
            got = self.sock.recv_into(view[taken:], n - taken)
            if got == 0:
                raise ConnectionError("closed")
            taken += got
        return view

    def frame(self):
        b0, b1 = bytes(self._exact(2))
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", bytes(self._exact(2)))[0]
        elif n == 127:
            n = struct.unpack(">Q", bytes(self._exact(8)))[0]
        return b0 & 0x0F, self._exact(n)


def test_throttled_reader_of_one_gib_keeps_relay_memory_bounded(relay):
    headers = {"ServiceBusAuthorization": hc.sas_token(hc.dotnet_audience(relay.host, "hyco"))}
    with connect(hc.listen_uri(relay.ws, "hyco"), additional_headers=headers) as control:
        run_throttled_stream(relay, control, headers)


def run_throttled_stream(relay, control, headers):
    result = {}
    opener = threading.Thread(target=lambda: result.update(
        sender=hc.RawWebSocket(relay.host, relay.port, "/$hc/hyco", headers=headers)))
    opener.start()
    _, accept = hc.parse_control(control.recv(timeout=10))
    target = accept["address"].split(str(relay.port), 1)[1]
    receiver = hc.RawWebSocket(relay.host, relay.port, target)
    opener.join(timeout=10)
    sender = result["sender"]
    baseline = rss(relay.process.pid)
    sent = {"bytes": 0, "digest": None}
    block = os.urandom(FRAME)
    # A zero masking key leaves the payload as it is, which keeps the Python sender fast.
    header = bytes([0x82, 0x80 | 127]) + struct.pack(">Q", FRAME) + b"\0\0\0\0"

    def produce():
        digest = hashlib.sha256()
        while sent["bytes"] < TOTAL:
            sender.sock.sendall(header + block)
            digest.update(block)
            sent["bytes"] += FRAME
        sent["digest"] = digest.hexdigest()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    reader = FrameReader(receiver)
    received = 0
    digest = hashlib.sha256()
    peak = baseline
    throttle_end = time.time() + 4
    while time.time() < throttle_end:
        opcode, payload = reader.frame()
        assert opcode in (0x0, 0x2)
        digest.update(payload)
        received += len(payload)
        peak = max(peak, rss(relay.process.pid))
        time.sleep(0.05)
    in_flight = sent["bytes"] - received
    assert in_flight < 48 * 1024 * 1024, "sender ran %d bytes ahead of a slow reader" % in_flight
    while received < TOTAL:
        opcode, payload = reader.frame()
        digest.update(payload)
        received += len(payload)
        if received % (64 * FRAME) == 0:
            peak = max(peak, rss(relay.process.pid))
    producer.join(timeout=60)
    assert received == TOTAL and digest.hexdigest() == sent["digest"]
    growth = peak - baseline
    assert growth < 64 * 1024 * 1024, "relay RSS grew by %d MiB" % (growth >> 20)
    print("relay RSS baseline %d MiB, peak %d MiB; in flight while throttled %d MiB" % (
        baseline >> 20, peak >> 20, in_flight >> 20))
    sender.close()
    receiver.close()
