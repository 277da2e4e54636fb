"""Frames of any size through the relay: a WebSocket message sent as one frame, as Microsoft's SDKs send a
whole buffer, is passed on while it arrives, byte-exact, with the relay's memory bounded by its write
watermarks rather than by the frame."""
import asyncio
import hashlib
import json
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


def test_an_http_response_written_as_one_6_mb_frame_reaches_the_client_at_once(relay):
    """As `res.end(buffer)` in Microsoft's Node listener does: the whole response body in one frame."""
    reply = os.urandom(6_000_000)

    async def run():
        control, _ = await open_listener(relay)
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        response = loop.run_in_executor(None, lambda: hc.http_request(
            relay.host, relay.port, "GET", "/hyco/big", headers=dotnet_headers(relay, "hyco")))
        kind, request = await next_control(control)
        assert kind == "request"
        # A small request comes whole on the control channel; the listener answers through a rendezvous, as
        # the Node SDK does for a large response.
        assert request["method"] == "GET"
        rendezvous = await connect(request["address"], max_size=None)
        await rendezvous.send(json.dumps({"response": {"requestId": request["id"], "statusCode": 200, "body": True}}))
        await rendezvous.send(reply)
        status, _, _, body = await response
        elapsed = time.monotonic() - started
        await rendezvous.close()
        await control.close()
        return status, body, elapsed

    status, body, elapsed = asyncio.run(run())
    assert status == 200 and body == reply
    assert elapsed < 10, "%.1f s" % elapsed


def test_a_frame_over_the_limit_on_a_message_channel_gets_1009_and_the_client_502_at_once(relay):
    """A frame the relay must read whole (a control-channel message, a response head on an HTTP rendezvous) and
    that is over its limit is answered with Close 1009 and a reason; the waiting HTTP client hears 502 at once,
    not a 504 when its timeout runs out. Both are logged."""
    headers = dotnet_headers(relay, "hyco")
    announce_100_mib = bytes([0x82, 0x80 | 127]) + (100 << 20).to_bytes(8, "big") + b"\0\0\0\0" + b"x" * 1000
    # A response head is JSON in a text message, read whole: 100 MiB of it is refused from the frame's head.
    announce_100_mib_text = bytes([0x81]) + announce_100_mib[1:]

    control = hc.RawWebSocket(relay.host, relay.port, "/$hc/hyco?sb-hc-action=listen&sb-hc-id=big", headers=headers)
    assert control.status == 101
    loop_response = {}

    def ask():
        loop_response["answer"] = hc.http_request(relay.host, relay.port, "GET", "/hyco/toobig", headers=headers)
        loop_response["at"] = time.monotonic()

    asker = threading.Thread(target=ask)
    started = time.monotonic()
    asker.start()
    fin, opcode, text = control.recv_frame()
    request = json.loads(text)["request"]
    target = request["address"].split(str(relay.port), 1)[1]
    rendezvous = hc.RawWebSocket(relay.host, relay.port, target)
    assert rendezvous.status == 101
    rendezvous.sock.sendall(announce_100_mib_text)
    fin, opcode, payload = rendezvous.recv_frame()
    assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == 1009
    assert b"Message too big" in payload
    asker.join(10)
    status, reason, _, _ = loop_response["answer"]
    assert status == 502 and "Message too big" in reason
    assert loop_response["at"] - started < 2, "the client learnt at once"
    rendezvous.close()

    # The same frame on the control channel: Close 1009, the listener counted as disconnected for it.
    control.sock.sendall(announce_100_mib)
    while True:
        fin, opcode, payload = control.recv_frame()
        if opcode == 0x8:
            break
    assert int.from_bytes(payload[:2], "big") == 1009
    control.close()
    log = open(relay.log_path).read()
    assert "listener sent Message too big" in log and "listener response refused on a request rendezvous" in log


STREAM = 64 << 20


def chunked_upload(host, port, target, headers, size, version="HTTP/1.1"):
    """PUTs `size` random bytes with chunked transfer coding (length unknown to the relay) and reads the reply.
    Returns (sha256 of what was sent, status, headers, body)."""
    import socket
    sock = socket.create_connection((host, port), timeout=120)
    lines = ["PUT %s %s" % (target, version), "Host: %s:%d" % (host, port), "Transfer-Encoding: chunked",
             "Connection: close"] + ["%s: %s" % item for item in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    digest = hashlib.sha256()
    block = os.urandom(1 << 20)
    for _ in range(size >> 20):
        digest.update(block)
        sock.sendall(b"%x\r\n" % len(block) + block + b"\r\n")
    sock.sendall(b"0\r\n\r\n")
    status, _, response_headers, body = hc.read_response(sock)
    return digest.hexdigest(), status, response_headers, body


def test_http_bodies_of_64_mib_stream_both_ways_in_bounded_memory(relay):
    """A chunked 64 MiB upload reaches the listener as one binary message on the rendezvous while it is being
    sent, and a 64 MiB response written as one frame reaches the client chunked; the relay holds neither."""
    reply = os.urandom(STREAM)

    async def run():
        control, _ = await open_listener(relay)
        loop = asyncio.get_running_loop()
        memory = PeakMemory(relay.process.pid)
        upload = loop.run_in_executor(
            None, lambda: chunked_upload(relay.host, relay.port, "/hyco/stream", dotnet_headers(relay, "hyco"), STREAM))
        kind, request = await next_control(control)
        assert kind == "request" and "method" not in request, "a body of unknown length goes through a rendezvous"
        rendezvous = await connect(request["address"], max_size=None, ping_interval=None)
        kind, full = hc.parse_control(await rendezvous.recv())
        assert full["method"] == "PUT" and full["body"] is True
        assert "Transfer-Encoding" not in full["requestHeaders"] and "transfer-encoding" not in full["requestHeaders"]
        received = await asyncio.wait_for(rendezvous.recv(), 120)
        await rendezvous.send(json.dumps({"response": {"requestId": full["id"], "statusCode": 200, "body": True}}))
        await rendezvous.send(reply)
        sent_digest, status, headers, body = await upload
        growth = memory.stop()
        await rendezvous.close()
        await control.close()
        return hashlib.sha256(received).hexdigest(), sent_digest, status, headers, body, growth

    received_digest, sent_digest, status, headers, body, growth = asyncio.run(run())
    assert received_digest == sent_digest, "the upload arrived byte-exact"
    assert status == 200 and headers.get("transfer-encoding") == "chunked"
    assert hashlib.sha256(body).digest() == hashlib.sha256(reply).digest(), "the download arrived byte-exact"
    assert growth < MEMORY_BOUND, "relay grew by %.1f MiB streaming 64 MiB each way" % (growth / 2**20)
    print("relay RSS growth streaming 64 MiB up and 64 MiB down over HTTP: %.1f MiB" % (growth / 2**20))


def test_an_http_10_client_gets_a_streamed_response_delimited_by_the_close(relay):
    """No chunked coding for HTTP/1.0: the body runs until the relay closes the connection."""
    async def run():
        control, _ = await open_listener(relay)
        loop = asyncio.get_running_loop()
        response = loop.run_in_executor(None, lambda: chunked_upload(
            relay.host, relay.port, "/hyco/old", dotnet_headers(relay, "hyco"), 1 << 20, version="HTTP/1.0"))
        _, request = await next_control(control)
        rendezvous = await connect(request["address"], max_size=None)
        _, full = hc.parse_control(await rendezvous.recv())
        await rendezvous.recv()
        await rendezvous.send(json.dumps({"response": {"requestId": full["id"], "statusCode": 201, "body": True}}))
        # Three frames of one message, sent in separate writes.
        async def pieces():
            for piece in (b"a" * 100_000, b"b" * 100_000, b"c"):
                yield piece
                await asyncio.sleep(0.05)
        await rendezvous.send(pieces())
        result = await response
        await rendezvous.close()
        await control.close()
        return result

    _, status, headers, body = asyncio.run(run())
    assert status == 201 and "transfer-encoding" not in headers and "content-length" not in headers
    assert headers.get("connection") == "close"
    assert body == b"a" * 100_000 + b"b" * 100_000 + b"c"
