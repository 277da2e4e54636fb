"""Clean-room Hybrid Connections client helpers, written from the protocol reference
(shared/reference/hybrid-connections.md), not from the relay's Swift code.

They act as Microsoft's clients do: the .NET SDK / azbridge (token in ServiceBusAuthorization, audience
http://host/path/, GUID sb-hc-id, first subprotocol) and the Node SDK (token in the query, unprefixed
reject parameters, statusCode as a string).
"""
import base64
import hashlib
import hmac
import json
import os
import socket
import struct
import time
import urllib.parse
import uuid

KEY_NAME = "RootManageSharedAccessKey"
KEY = "SGVsbG9Xb3JsZFNlY3JldEtleUZvclRlc3RpbmcxMjM0NTY="
SEND_KEY_NAME = "SendOnly"
SEND_KEY = "c2VuZC1vbmx5LWtleS1mb3ItdGVzdGluZw=="


def sas_token(resource, key_name=KEY_NAME, key=KEY, ttl=3600, expiry=None):
    """SAS per the reference §2.2: HMAC-SHA256 keyed with the key's UTF-8 text."""
    se = str(expiry if expiry is not None else int(time.time()) + ttl)
    sr = urllib.parse.quote(resource, safe="")
    sig = base64.b64encode(hmac.new(key.encode("utf-8"), (sr + "\n" + se).encode("utf-8"), hashlib.sha256).digest())
    return "SharedAccessSignature sr=%s&sig=%s&se=%s&skn=%s" % (
        sr, urllib.parse.quote(sig.decode(), safe=""), se, urllib.parse.quote(key_name, safe=""))


def dotnet_audience(host, path):
    """.NET: http scheme, no port, trailing slash."""
    return "http://%s/%s/" % (host, path)


def node_audience(host, path):
    """Node createRelayToken: http scheme, no port, no $hc, no trailing slash."""
    return "http://%s/%s" % (host, path)


def form_encode_plus(value):
    """.NET WebUtility.UrlEncode style: spaces become '+'."""
    return urllib.parse.quote_plus(value)


def form_encode_pct(value):
    """Python quote style: spaces become %20."""
    return urllib.parse.quote(value, safe="")


class RawWebSocket:
    """A minimal RFC 6455 client over a plain socket, for what libraries hide: sending data after a
    Close (half-close as azbridge does it), unsolicited pongs, exact frames."""

    def __init__(self, host, port, target, headers=None, timeout=10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = ["GET %s HTTP/1.1" % target, "Host: %s:%d" % (host, port), "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Key: " + key, "Sec-WebSocket-Version: 13"]
        for name, value in (headers or {}).items():
            lines.append("%s: %s" % (name, value))
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed during handshake")
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split(" ")[1])
        self.reason = status_line.split(" ", 2)[2] if status_line.count(" ") >= 2 else ""
        self.headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        if self.status == 101:
            expected = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
            assert self.headers.get("sec-websocket-accept") == expected

    def send_frame(self, opcode, payload=b"", fin=True):
        mask = os.urandom(4)
        header = bytes([(0x80 if fin else 0) | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if n < 4096 else _mask_fast(payload, mask)
        self.sock.sendall(header + mask + masked)

    def send_close(self, code=1000, reason="Shutdown"):
        self.send_frame(0x8, struct.pack(">H", code) + reason.encode())

    def _read(self, n):
        while len(self.buffer) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def recv_frame(self):
        """Returns (fin, opcode, payload); server frames must not be masked."""
        b0, b1 = self._read(2)
        assert b1 & 0x80 == 0, "server frames are never masked"
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", self._read(8))[0]
        return bool(b0 & 0x80), b0 & 0x0F, self._read(n)

    def recv_data(self, count):
        """Reads data frames until `count` payload bytes arrived."""
        data = b""
        while len(data) < count:
            fin, opcode, payload = self.recv_frame()
            assert opcode in (0x0, 0x1, 0x2), "expected data, got opcode %d" % opcode
            data += payload
        return data

    def close(self):
        self.sock.close()


def _mask_fast(payload, mask):
    n = len(payload)
    key = int.from_bytes((mask * ((n + 3) // 4))[:n], "little")
    return (int.from_bytes(payload, "little") ^ key).to_bytes(n, "little")


def http_request(host, port, method, target, headers=None, body=b"", timeout=70):
    """One HTTP/1.1 request on a fresh socket; returns (status, reason, headers, body)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    lines = ["%s %s HTTP/1.1" % (method, target), "Host: %s:%d" % (host, port), "Connection: close",
             "Content-Length: %d" % len(body)]
    for name, value in (headers or {}).items():
        lines.append("%s: %s" % (name, value))
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return read_response(sock)


def read_to_end(sock, size=1 << 20):
    """Everything the peer sends until it closes its side."""
    data = bytearray()
    while True:
        chunk = sock.recv(size)
        if not chunk:
            return bytes(data)
        data += chunk


def read_response(sock):
    """Reads one response to the connection's end and closes the socket; returns (status, reason, headers,
    body), a chunked body decoded (its framing checked), a Content-Length checked."""
    data = read_to_end(sock)
    sock.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    response_headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        response_headers.setdefault(name.strip().lower(), value.strip())
    if response_headers.get("transfer-encoding", "").lower() == "chunked":
        rest = dechunk(rest)
    elif "content-length" in response_headers:
        assert len(rest) == int(response_headers["content-length"]), (len(rest), response_headers)
    return int(parts[1]), (parts[2] if len(parts) > 2 else ""), response_headers, rest


def dechunk(data):
    """The body of a chunked message, checking its framing strictly (every size line, CRLF and the last chunk)."""
    body = b""
    while True:
        size_line, crlf, data = data.partition(b"\r\n")
        assert crlf, "a chunk size line without CRLF"
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            assert data == b"\r\n", "trailers or bytes after the last chunk: %r" % data[:40]
            return body
        assert data[size:size + 2] == b"\r\n", "a chunk not followed by CRLF"
        body += data[:size]
        data = data[size + 2:]


def listen_uri(base, path, listener_id=None, token=None, encode=form_encode_plus):
    uri = "%s/$hc/%s?sb-hc-action=listen&sb-hc-id=%s" % (base, path, listener_id or str(uuid.uuid4()))
    if token:
        uri += "&sb-hc-token=" + encode(token)
    return uri


def parse_control(text):
    message = json.loads(text)
    assert len(message) == 1, message
    return next(iter(message.items()))
