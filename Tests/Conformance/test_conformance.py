"""Wire-conformance tests: Microsoft-SDK-shaped clients against the built relay (reference §6)."""
import asyncio
import json
import os
import struct
import time
import uuid

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import hc


def dotnet_headers(relay, path):
    return {"ServiceBusAuthorization": hc.sas_token(hc.dotnet_audience(relay.host, path))}


async def open_listener(relay, path="hyco", headers=None, uri=None, **kwargs):
    listener_id = str(uuid.uuid4())
    uri = uri or hc.listen_uri(relay.ws, path, listener_id)
    ws = await connect(uri, additional_headers=headers if headers is not None else dotnet_headers(relay, path),
                       ping_interval=None, max_size=None, **kwargs)
    return ws, listener_id


async def next_control(ws, timeout=10):
    return hc.parse_control(await asyncio.wait_for(ws.recv(), timeout))


async def joined_pair(relay):
    """A listener on `hyco` and a .NET-style sender joined through the relay: (control, sender, rendezvous)."""
    control, _ = await open_listener(relay)
    sender_task = asyncio.ensure_future(connect("%s/$hc/hyco" % relay.ws, additional_headers=dotnet_headers(relay, "hyco")))
    _, accept = await next_control(control)
    rendezvous = await connect(accept["address"])
    return control, await sender_task, rendezvous


def status_of(excinfo):
    return excinfo.value.response.status_code, excinfo.value.response.reason_phrase


def test_dotnet_style_listen_connect_echo(relay):
    async def run():
        control, listener_id = await open_listener(relay)
        sender_task = asyncio.ensure_future(connect(
            "%s/$hc/hyco/app/suffix?x=1&sb-hc-action=connect&sb-hc-id=%s" % (relay.ws, uuid.uuid4()),
            additional_headers={**dotnet_headers(relay, "hyco"),
                                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
            subprotocols=["chat.v1", "chat.v2"], max_size=None))
        kind, accept = await next_control(control)
        assert kind == "accept"
        assert "sb-hc-action=accept" in accept["address"]
        assert "/$hc/hyco/app/suffix?x=1&" in accept["address"], accept["address"]
        headers = {k.lower(): v for k, v in accept["connectHeaders"].items()}
        for required in ("sec-websocket-key", "sec-websocket-version", "host", "traceparent", "sec-websocket-protocol"):
            assert required in headers, required
        assert "servicebusauthorization" not in headers
        assert "sb-hc-token" not in accept["address"]
        assert accept["remoteEndpoint"]["address"] == "127.0.0.1"
        first = headers["sec-websocket-protocol"].split(",")[0].strip()
        rendezvous = await connect(accept["address"], subprotocols=[first], max_size=None)
        assert rendezvous.subprotocol == "chat.v1"
        sender = await sender_task
        assert sender.subprotocol == "chat.v1"
        await sender.send(b"\x00\x01binary")
        assert await rendezvous.recv() == b"\x00\x01binary"
        await sender.send("text stays text")
        assert await rendezvous.recv() == "text stays text"
        payload = os.urandom(300_000)
        await rendezvous.send(payload)
        assert await sender.recv() == payload
        await sender.close()
        await rendezvous.wait_closed()
        await control.close()
    asyncio.run(run())


def test_no_subprotocol_comes_back_null(relay):
    async def run():
        control, sender, rendezvous = await joined_pair(relay)
        assert sender.subprotocol is None and rendezvous.subprotocol is None
        assert "sec-websocket-extensions" not in {k.lower() for k in sender.response.headers.keys()}
        await sender.close()
        await control.close()
    asyncio.run(run())


@pytest.mark.parametrize("encode", [hc.form_encode_plus, hc.form_encode_pct])
def test_node_style_query_token_and_unprefixed_reject(relay, encode):
    async def run():
        token = hc.sas_token(hc.node_audience(relay.host, "hyco"))
        control, _ = await open_listener(relay, headers={}, uri=hc.listen_uri(relay.ws, "hyco", token=token, encode=encode))
        sender_uri = "%s/$hc/hyco?sb-hc-action=connect&sb-hc-token=%s" % (relay.ws, encode(token))
        sender_task = asyncio.ensure_future(connect(sender_uri))
        _, accept = await next_control(control)
        with pytest.raises(InvalidStatus) as rejected:
            await connect(accept["address"] + "&statusCode=401&statusDescription=" + hc.form_encode_pct("Go away"))
        assert rejected.value.response.status_code == 410
        with pytest.raises(InvalidStatus) as sender_error:
            await sender_task
        assert status_of(sender_error) == (401, "Go away")
        await control.close()
    asyncio.run(run())


def test_prefixed_reject_and_address_single_use(relay):
    async def run():
        control, _ = await open_listener(relay)
        sender_task = asyncio.ensure_future(connect("%s/$hc/hyco" % relay.ws, additional_headers=dotnet_headers(relay, "hyco")))
        _, accept = await next_control(control)
        with pytest.raises(InvalidStatus) as rejected:
            await connect(accept["address"] + "&sb-hc-statusCode=400&sb-hc-statusDescription=Rejected+by+user+code")
        assert rejected.value.response.status_code == 410
        with pytest.raises(InvalidStatus) as sender_error:
            await sender_task
        assert status_of(sender_error) == (400, "Rejected by user code")
        with pytest.raises(InvalidStatus) as reused:
            await connect(accept["address"])
        assert reused.value.response.status_code == 404
        await control.close()
    asyncio.run(run())


def test_not_found_replies_in_azure_shape(relay):
    async def run():
        with pytest.raises(InvalidStatus) as no_listener:
            await connect("%s/$hc/limited?sb-hc-id=abc" % relay.ws, additional_headers=dotnet_headers(relay, "limited"))
        status, reason = status_of(no_listener)
        assert status == 404
        assert reason.startswith("There are no listeners connected for the endpoint. TrackingId:abc")
        assert "SystemTracker:sb://127.0.0.1/limited" in reason and "Timestamp:" in reason
        with pytest.raises(InvalidStatus) as no_entity:
            await connect("%s/$hc/nothere" % relay.ws, additional_headers=dotnet_headers(relay, "nothere"))
        status, reason = status_of(no_entity)
        assert status == 404 and reason.startswith("Endpoint does not exist.")
    asyncio.run(run())


def test_authentication_failures(relay):
    async def run():
        cases = [
            ({}, 401),
            ({"ServiceBusAuthorization": hc.sas_token(hc.dotnet_audience(relay.host, "hyco"), key="wrong")}, 401),
            ({"ServiceBusAuthorization": hc.sas_token(hc.dotnet_audience(relay.host, "hyco"), expiry=int(time.time()) - 3600)}, 401),
            ({"ServiceBusAuthorization": hc.sas_token(hc.dotnet_audience(relay.host, "other"))}, 401),
            ({"ServiceBusAuthorization": "garbage"}, 401),
            ({"ServiceBusAuthorization": hc.sas_token(hc.dotnet_audience(relay.host, "hyco"), hc.SEND_KEY_NAME, hc.SEND_KEY)}, 403),
        ]
        for headers, expected in cases:
            with pytest.raises(InvalidStatus) as error:
                await connect(hc.listen_uri(relay.ws, "hyco"), additional_headers=headers)
            assert error.value.response.status_code == expected, (headers, status_of(error))
        # The Send-only rule may send, and a Bearer-prefixed Authorization header is the last resort.
        bearer = {"Authorization": "Bearer " + hc.sas_token(hc.dotnet_audience(relay.host, "hyco"), hc.SEND_KEY_NAME, hc.SEND_KEY)}
        with pytest.raises(InvalidStatus) as no_listener:
            await connect("%s/$hc/hyco" % relay.ws, additional_headers=bearer)
        assert no_listener.value.response.status_code == 404
        assert "invalid signature" not in relay.log().split("\n")[-1]
    asyncio.run(run())


def test_anonymous_senders_and_slash_entities(relay):
    async def run():
        path = "microsoft.hybridcompute/machines/abc"
        control, _ = await open_listener(relay, path=path)
        sender_task = asyncio.ensure_future(connect("%s/$hc/%s/v2?sb-hc-action=connect" % (relay.ws, path),
                                                  additional_headers=dotnet_headers(relay, path)))
        _, accept = await next_control(control)
        assert "/$hc/%s/v2?" % path in accept["address"]
        rendezvous = await connect(accept["address"])
        sender = await sender_task
        await sender.send(b"x")
        assert await rendezvous.recv() == b"x"
        await sender.close()
        await control.close()

        open_control, _ = await open_listener(relay, path="open")
        anonymous = asyncio.ensure_future(connect("%s/$hc/open" % relay.ws))
        _, accept = await next_control(open_control)
        await connect(accept["address"])
        await (await anonymous).close()
        await open_control.close()
    asyncio.run(run())


def test_unsolicited_pongs_and_renew_token(relay):
    async def run():
        control, _ = await open_listener(relay)
        await control.pong(b"heartbeat")
        await control.pong()
        renewed = hc.sas_token(hc.dotnet_audience(relay.host, "hyco"), ttl=7200)
        await control.send(json.dumps({"renewToken": {"token": renewed}}))
        await asyncio.sleep(2.5)  # several relay ping intervals: the library answers pings, the channel lives
        sender_task = asyncio.ensure_future(connect("%s/$hc/hyco" % relay.ws, additional_headers=dotnet_headers(relay, "hyco")))
        kind, accept = await next_control(control)
        assert kind == "accept"
        await (await asyncio.gather(connect(accept["address"]), sender_task))[1].close()
        bad = hc.sas_token(hc.dotnet_audience(relay.host, "hyco"), key="wrong")
        await control.send(json.dumps({"renewToken": {"token": bad}}))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(control.recv(), 5)
        assert closed.value.rcvd.code == 1008
    asyncio.run(run())


def test_half_close_shutdown_keeps_reply_flowing(relay):
    """azbridge: TCP EOF becomes Close(1000, "Shutdown"); the reply must still arrive afterwards."""
    async def run():
        control, _ = await open_listener(relay)
        loop = asyncio.get_running_loop()
        sender_future = loop.run_in_executor(None, lambda: hc.RawWebSocket(
            relay.host, relay.port, "/$hc/hyco", headers=dotnet_headers(relay, "hyco")))
        _, accept = await next_control(control)
        target = accept["address"].split(str(relay.port), 1)[1]
        rendezvous = await loop.run_in_executor(None, lambda: hc.RawWebSocket(relay.host, relay.port, target))
        sender = await sender_future
        assert sender.status == 101 and rendezvous.status == 101

        def exchange():
            sender.send_frame(0x2, b"request")
            sender.send_close(1000, "Shutdown")
            assert rendezvous.recv_data(7) == b"request"
            fin, opcode, payload = rendezvous.recv_frame()
            assert opcode == 0x8 and struct.unpack(">H", payload[:2])[0] == 1000 and payload[2:] == b"Shutdown"
            reply = os.urandom(200_000)
            for offset in range(0, len(reply), 65536):
                rendezvous.send_frame(0x2, reply[offset:offset + 65536])
            rendezvous.send_close(1000, "Shutdown")
            assert sender.recv_data(len(reply)) == reply
            fin, opcode, payload = sender.recv_frame()
            assert opcode == 0x8 and struct.unpack(">H", payload[:2])[0] == 1000
            sender.close()
            rendezvous.close()
        await loop.run_in_executor(None, exchange)
        await control.close()
    asyncio.run(run())


def test_azbridge_preamble_passes_untouched(relay):
    async def run():
        control, sender, rendezvous = await joined_pair(relay)
        name = b"sql"
        await sender.send(bytes([1, 0, 0, len(name)]))
        await sender.send(name)
        assert await rendezvous.recv() == bytes([1, 0, 0, 3])
        assert await rendezvous.recv() == b"sql"
        await rendezvous.send(bytes([1, 0, 0]))
        assert await sender.recv() == bytes([1, 0, 0])
        await sender.close()
        await control.close()
    asyncio.run(run())


def test_accept_timeout_gives_504(relay):
    async def run():
        control, _ = await open_listener(relay)
        started = time.time()
        with pytest.raises(InvalidStatus) as error:
            await connect("%s/$hc/hyco" % relay.ws, additional_headers=dotnet_headers(relay, "hyco"), open_timeout=20)
        assert error.value.response.status_code == 504
        assert 2.5 < time.time() - started < 10
        await control.close()
    asyncio.run(run())


def test_twenty_sixth_listener_refused(relay):
    async def run():
        listeners = [ (await open_listener(relay, path="limited"))[0] for _ in range(25)]
        with pytest.raises(InvalidStatus) as error:
            await open_listener(relay, path="limited")
        status, reason = status_of(error)
        assert status == 403 and "MaximumListenersPerEndpoint" in reason
        await listeners[0].close()
        await asyncio.sleep(0.2)
        replacement, _ = await open_listener(relay, path="limited")
        for ws in listeners[1:] + [replacement]:
            await ws.close()
    asyncio.run(run())


def test_http_mode_small_request_on_control_channel(relay):
    async def run():
        control, _ = await open_listener(relay)
        loop = asyncio.get_running_loop()
        token = hc.form_encode_plus(hc.sas_token(hc.dotnet_audience(relay.host, "hyco")))
        response_future = loop.run_in_executor(None, lambda: hc.http_request(
            relay.host, relay.port, "POST", "/hyco/small?x=1&sb-hc-token=%s&sb-hc-undefined" % token,
            headers={"Content-Type": "text/plain", "X-Multi": "a", "Authorization": "end-to-end"}, body=b"hello"))
        kind, request = await next_control(control)
        assert kind == "request"
        assert request["method"] == "POST"
        assert request["requestTarget"] == "/hyco/small?x=1&sb-hc-undefined"
        headers = {k.lower(): v for k, v in request["requestHeaders"].items()}
        assert "servicebusauthorization" not in headers and headers["authorization"] == "end-to-end"
        assert headers["via"].startswith("1.1 ")
        assert request["body"] is True
        assert await control.recv() == b"hello"
        # Node style: statusCode as a string, lowercase headers, body true with one binary message.
        await control.send(json.dumps({"response": {"requestId": request["id"], "statusCode": "201",
                                                     "statusDescription": "Created",
                                                     "responseHeaders": {"content-type": "text/plain"},
                                                     "body": True}}))
        await control.send(b"world")
        status, reason, response_headers, body = await response_future
        assert (status, reason, body) == (201, "Created", b"world")
        assert response_headers["content-type"] == "text/plain" and "via" in response_headers
        await control.close()
    asyncio.run(run())


def test_http_mode_large_request_and_response_through_rendezvous(relay):
    async def run():
        control, _ = await open_listener(relay)
        loop = asyncio.get_running_loop()
        upload = os.urandom(100_000)
        response_future = loop.run_in_executor(None, lambda: hc.http_request(
            relay.host, relay.port, "PUT", "/hyco/big", headers=dotnet_headers(relay, "hyco"), body=upload))
        kind, request = await next_control(control)
        assert kind == "request" and "method" not in request and "body" not in request
        rendezvous = await connect(request["address"], max_size=None)
        kind, full = hc.parse_control(await rendezvous.recv())
        assert kind == "request" and full["method"] == "PUT" and full["body"] is True
        assert await rendezvous.recv() == upload
        reply = os.urandom(70_000)
        await rendezvous.send(json.dumps({"response": {"requestId": full["id"], "statusCode": 200, "body": True}}))
        await rendezvous.send(reply)
        await rendezvous.close()
        status, _, _, body = await response_future
        assert status == 200 and body == reply
        await control.close()
    asyncio.run(run())


def test_http_mode_errors(relay):
    status, _, _, _ = hc.http_request(relay.host, relay.port, "GET", "/limited/x", headers=dotnet_headers(relay, "limited"))
    assert status == 502
    status, reason, _, _ = hc.http_request(relay.host, relay.port, "GET", "/$hc/hyco")
    assert status == 400 and "only for web-socket requests" in reason
    status, _, _, _ = hc.http_request(relay.host, relay.port, "GET", "/hyco/x")
    assert status == 401
    status, _, _, _ = hc.http_request(relay.host, relay.port, "GET", "/nothere/x")
    assert status == 404


def test_http_mode_timeout_gives_504(relay):
    async def run():
        control, _ = await open_listener(relay)
        loop = asyncio.get_running_loop()
        response = loop.run_in_executor(None, lambda: hc.http_request(
            relay.host, relay.port, "GET", "/hyco/slow", headers=dotnet_headers(relay, "hyco")))
        await next_control(control)
        status, reason, _, _ = await response
        assert status == 504 and "did not respond in the required time" in reason
        await control.close()
    asyncio.run(run())


def test_bad_input_keeps_relay_serving(relay):
    cases = [
        (b"GET /$hc/hyco?sb-hc-action=bogus HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", b" 400 "),
        (b"GET /$hc/hyco HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", b" 400 "),
        (b"GET /hyco HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n", b" 431 "),
        (b"NOT HTTP AT ALL\r\n\r\n", b" 400 "),
        (b"GET /$hc/%zz HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", b" 400 "),
    ]
    import socket
    for raw, expected in cases:
        sock = socket.create_connection((relay.host, relay.port), timeout=5)
        sock.sendall(raw)
        reply = sock.recv(4096)
        sock.close()
        assert expected in reply.split(b"\r\n")[0], (raw[:60], reply[:200])
    assert relay.process.poll() is None


def test_incomplete_handshakes_time_out_and_do_not_block_others(relay):
    import socket
    stalled = []
    for _ in range(300):
        sock = socket.create_connection((relay.host, relay.port), timeout=10)
        sock.sendall(b"GET /$hc/hyco HTTP/1.1\r\nHost: x\r\n")  # never finished
        stalled.append(sock)
    # New work goes through while hundreds of handshakes hang.
    status, _, _, _ = hc.http_request(relay.host, relay.port, "GET", "/nothere/x")
    assert status == 404
    started = time.time()
    reply = stalled[0].recv(4096)
    assert b" 408 " in reply.split(b"\r\n")[0] and 1 < time.time() - started < 6
    for sock in stalled:
        sock.close()


def test_a_listener_gone_after_an_accept_lets_its_sender_know_at_once(relay):
    """The listener that was sent the accept drops its control channel without opening the rendezvous: the
    sender is answered now (404 like any sender once no listener is left, 503 while another one is), not
    after the accept timeout."""
    async def run():
        answers = []
        for listeners in (1, 2):
            controls = [(await open_listener(relay))[0] for _ in range(listeners)]
            started = time.monotonic()
            sender = asyncio.ensure_future(connect("%s/$hc/hyco" % relay.ws, additional_headers=dotnet_headers(relay, "hyco")))
            chosen = None
            while chosen is None:
                for control in controls:
                    try:
                        kind, _ = hc.parse_control(await asyncio.wait_for(control.recv(), 0.2))
                        assert kind == "accept"
                        chosen = control
                    except asyncio.TimeoutError:
                        pass
            await chosen.close()
            with pytest.raises(InvalidStatus) as refused:
                await sender
            answers.append((status_of(refused)[0], time.monotonic() - started))
            for control in controls:
                await control.close()
        return answers

    (alone, alone_seconds), (shared, shared_seconds) = asyncio.run(run())
    assert alone == 404 and shared == 503
    assert alone_seconds < 1.5 and shared_seconds < 1.5, (alone_seconds, shared_seconds)
    assert "listener gone with rendezvous it had not opened" in relay.log()


def test_http_mode_answers_expect_100_continue(relay):
    """A client that asks before sending its body (curl does for large ones) hears 100 Continue once the
    relay would take the request, then the listener's answer; a refusal is the final answer instead, and an
    expectation other than 100-continue gets 417. The listener never sees the Expect header."""
    import socket as sockets

    def head(target, headers, length):
        lines = ["POST %s HTTP/1.1" % target, "Host: 127.0.0.1:%d" % relay.port, "Connection: close",
                 "Content-Length: %d" % length] + ["%s: %s" % item for item in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def read_head(sock):
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(1)
            assert chunk, data
            data += chunk
        return data.decode("latin-1")

    async def run():
        control, _ = await open_listener(relay)
        body = os.urandom(50_000)

        def client():
            sock = sockets.create_connection(("127.0.0.1", relay.port), timeout=10)
            sock.sendall(head("/hyco/upload", {**dotnet_headers(relay, "hyco"), "Expect": "100-continue"}, len(body)))
            interim = read_head(sock)
            sock.sendall(body)
            final = hc.read_to_end(sock, 65536)
            sock.close()
            return interim, final.decode("latin-1")

        answered = asyncio.get_running_loop().run_in_executor(None, client)
        kind, request = await next_control(control)
        assert kind == "request"
        if request.get("method"):
            received = await control.recv()
            sink = control
        else:
            sink = await connect(request["address"], max_size=None)
            kind, request = hc.parse_control(await sink.recv())
            received = await sink.recv()
        assert received == body
        assert "expect" not in {k.lower() for k in request["requestHeaders"]}
        await sink.send(json.dumps({"response": {"requestId": request["id"], "statusCode": 204}}))
        interim, final = await answered
        assert interim.startswith("HTTP/1.1 100 Continue\r\n"), interim
        assert final.startswith("HTTP/1.1 204 "), final
        if sink is not control:
            await sink.close()
        await control.close()

    asyncio.run(run())
    # Refused before the body: the final answer, no 100.
    sock = hc.socket.create_connection(("127.0.0.1", relay.port), timeout=10)
    sock.sendall(head("/hyco/upload", {"Expect": "100-continue"}, 10))
    assert read_head(sock).startswith("HTTP/1.1 401 ")
    sock.close()
    sock = hc.socket.create_connection(("127.0.0.1", relay.port), timeout=10)
    sock.sendall(head("/hyco/upload", {**dotnet_headers(relay, "hyco"), "Expect": "something-else"}, 10))
    assert read_head(sock).startswith("HTTP/1.1 417 ")
    sock.close()



def test_senders_pin_or_exclude_listeners_by_tracking_id(relay):
    """Microsoft-Relay-AllowedListeners / -DisallowedListeners: the `sb-hc-id` each listener listened with picks
    or excludes it, for WebSocket senders and HTTP-mode requests; none qualifying is Azure's 404."""
    async def run():
        first, first_id = await open_listener(relay)
        second, second_id = await open_listener(relay)
        messages = asyncio.Queue()

        async def pump(name, ws):
            async for text in ws:
                await messages.put((name, hc.parse_control(text)))

        pumps = [asyncio.ensure_future(pump("first", first)), asyncio.ensure_future(pump("second", second))]

        async def chosen(headers):
            """Which listener gets the sender's accept (the sender is then rejected)."""
            sender = asyncio.ensure_future(connect(
                "%s/$hc/hyco" % relay.ws, additional_headers={**dotnet_headers(relay, "hyco"), **headers}))
            name, (kind, accept) = await asyncio.wait_for(messages.get(), 10)
            assert kind == "accept"
            with pytest.raises(InvalidStatus):  # a delivered rejection is answered 410
                await connect(accept["address"] + "&sb-hc-statusCode=403&sb-hc-statusDescription=pinned")
            with pytest.raises(InvalidStatus):
                await sender
            return name

        pinned = [await chosen({"Microsoft-Relay-AllowedListeners": second_id.upper()}) for _ in range(8)]
        assert pinned == ["second"] * 8, "ids compare case-insensitively"
        excluded = [await chosen({"Microsoft-Relay-DisallowedListeners": "x, %s" % second_id}) for _ in range(8)]
        assert excluded == ["first"] * 8
        both = {await chosen({"Microsoft-Relay-AllowedListeners": "%s,%s" % (first_id, second_id)})
                for _ in range(16)}
        assert both == {"first", "second"}, "several allowed ones still share the load"

        with pytest.raises(InvalidStatus) as refused:
            await connect("%s/$hc/hyco" % relay.ws, additional_headers={
                **dotnet_headers(relay, "hyco"), "Microsoft-Relay-AllowedListeners": str(uuid.uuid4())})
        assert refused.value.response.status_code == 404
        assert "None of the connected listeners meet the AllowedListeners/DisallowedListeners criteria" in \
            refused.value.response.reason_phrase

        # HTTP mode: the pinned listener gets the request; none qualifying is a 404 too, not the 502 of no listener.
        loop = asyncio.get_running_loop()
        response = loop.run_in_executor(None, lambda: hc.http_request(
            relay.host, relay.port, "GET", "/hyco/pinned",
            headers={**dotnet_headers(relay, "hyco"), "Microsoft-Relay-AllowedListeners": first_id}))
        name, (kind, request) = await asyncio.wait_for(messages.get(), 10)
        assert (name, kind) == ("first", "request")
        await first.send(json.dumps({"response": {"requestId": request["id"], "statusCode": 204}}))
        assert (await response)[0] == 204
        status, reason, _, _ = await loop.run_in_executor(None, lambda: hc.http_request(
            relay.host, relay.port, "GET", "/hyco/pinned",
            headers={**dotnet_headers(relay, "hyco"), "Microsoft-Relay-DisallowedListeners": "%s,%s" % (first_id, second_id)}))
        assert status == 404 and "meet the AllowedListeners" in reason

        for task in pumps:
            task.cancel()
        await first.close()
        await second.close()

    asyncio.run(run())
