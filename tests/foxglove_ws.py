"""A raw Foxglove WebSocket protocol client for tests (stdlib only: socket + RFC 6455 framing).

The venv has no WebSocket client library; this speaks the protocol byte by byte, which is what the tests
want to check anyway: text frames are JSON operations, binary frames carry an opcode byte
(server: 1 message data, 3 service call response; client: 1 message data, 2 service call request).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
from typing import Any


class WsError(RuntimeError):
    """Handshake refused, connection closed or a timeout while waiting."""


class FoxgloveWsClient:
    """Connects to a Foxglove WebSocket server with subprotocol `foxglove.sdk.v1` and keeps what it saw."""

    def __init__(self, host: str, port: int, subprotocol: str = "foxglove.sdk.v1", timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                   f"Sec-WebSocket-Protocol: {subprotocol}\r\n\r\n")
        self.sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise WsError(f"connection closed during the handshake: {head!r}")
            head += chunk
        self.status_line = head.split(b"\r\n", 1)[0].decode()
        if " 101 " not in self.status_line:
            raise WsError(f"handshake refused: {self.status_line}")
        self.channels: dict[int, dict] = {}      # channel id -> advertisement
        self.services: dict[str, dict] = {}      # service name -> advertisement
        self.text: list[dict] = []               # every JSON operation received
        self.messages: list[tuple[int, int, bytes]] = []  # (subscription id, log time, payload)
        self.responses: dict[int, tuple[str, bytes]] = {}  # call id -> (encoding, payload)
        self.failures: dict[int, str] = {}       # call id -> failure message
        self._buf = b""

    # --- framing ---------------------------------------------------------------------------------------
    def _send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise WsError("connection closed by the server")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _recv_frame(self) -> tuple[int, bytes]:
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", self._read(8))[0]
        payload = self._read(n)
        opcode = b0 & 0x0F
        if opcode == 0x9:  # ping -> pong
            self._send_frame(0xA, payload)
        if opcode == 0x8:
            raise WsError(f"server closed the connection: {payload[2:].decode(errors='replace')}")
        return opcode, payload

    def send_json(self, op: dict) -> None:
        """Send one JSON operation (a text frame)."""
        self._send_frame(0x1, json.dumps(op).encode())

    def close(self) -> None:
        """Close the socket (no closing handshake: the server copes)."""
        self.sock.close()

    # --- protocol --------------------------------------------------------------------------------------
    def poll(self, duration: float) -> None:
        """Receive and file frames for `duration` seconds."""
        end = time.monotonic() + duration
        while (left := end - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                opcode, payload = self._recv_frame()
            except TimeoutError:
                return
            self._file(opcode, payload)

    def _file(self, opcode: int, payload: bytes) -> None:
        if opcode == 0x1:
            op = json.loads(payload)
            self.text.append(op)
            if op.get("op") == "advertise":
                self.channels.update({c["id"]: c for c in op["channels"]})
            elif op.get("op") == "unadvertise":
                for cid in op["channelIds"]:
                    self.channels.pop(cid, None)
            elif op.get("op") == "advertiseServices":
                self.services.update({s["name"]: s for s in op["services"]})
            elif op.get("op") == "serviceCallFailure":
                self.failures[op["callId"]] = op["message"]
        elif opcode == 0x2 and payload:
            if payload[0] == 1:
                sub, ts = struct.unpack_from("<IQ", payload, 1)
                self.messages.append((sub, ts, payload[13:]))
            elif payload[0] == 3:
                _, call, n = struct.unpack_from("<III", payload, 1)
                self.responses[call] = (payload[13:13 + n].decode(), payload[13 + n:])

    def wait_for(self, predicate, timeout: float = 10.0, what: str = "condition") -> Any:
        """Poll until `predicate()` is truthy; returns its value or raises WsError naming `what`."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = predicate()
            if value:
                return value
            self.poll(0.1)
        raise WsError(f"timed out after {timeout} s waiting for {what}")

    def channel_id(self, topic: str) -> int:
        """Id of the advertised channel on `topic` (waits for it)."""
        return self.wait_for(lambda: next((c for c, v in self.channels.items() if v["topic"] == topic), None),
                             what=f"channel {topic}")

    def subscribe(self, topic: str, sub_id: int) -> None:
        """Subscribe to the channel of `topic` under subscription id `sub_id`."""
        cid = self.channel_id(topic)
        self.send_json({"op": "subscribe", "subscriptions": [{"id": sub_id, "channelId": cid}]})

    def latest_json(self, sub_id: int) -> dict | None:
        """The newest message received on subscription `sub_id`, decoded as JSON."""
        for sub, _, payload in reversed(self.messages):
            if sub == sub_id:
                return json.loads(payload)
        return None

    def advertise(self, chan_id: int, topic: str, schema_name: str = "", encoding: str = "json") -> None:
        """Advertise a client channel for client-publish."""
        self.send_json({"op": "advertise", "channels": [{"id": chan_id, "topic": topic, "encoding": encoding,
                                                          "schemaName": schema_name}]})

    def publish(self, chan_id: int, message: dict | bytes) -> None:
        """Send one message on an advertised client channel."""
        data = message if isinstance(message, bytes) else json.dumps(message).encode()
        self._send_frame(0x2, bytes([1]) + struct.pack("<I", chan_id) + data)

    def call(self, service: str, request: dict, call_id: int, timeout: float = 10.0) -> tuple[bool, Any]:
        """Call `service` with a JSON request; returns (True, response dict) or (False, failure message)."""
        sid = self.wait_for(lambda: self.services.get(service), what=f"service {service}")["id"]
        self.call_id(sid, request, call_id)
        self.wait_for(lambda: call_id in self.responses or call_id in self.failures, timeout,
                      f"the answer to {service}")
        if call_id in self.failures:
            return False, self.failures[call_id]
        return True, json.loads(self.responses[call_id][1] or b"{}")

    def call_id(self, service_id: int, request: dict, call_id: int) -> None:
        """Send a raw service call request to service id `service_id`."""
        enc = b"json"
        self._send_frame(0x2, bytes([2]) + struct.pack("<III", service_id, call_id, len(enc)) + enc
                         + json.dumps(request).encode())

    def get_parameters(self, names: list[str], req_id: str) -> dict[str, Any]:
        """getParameters; returns {name: value} from the matching parameterValues answer."""
        self.send_json({"op": "getParameters", "parameterNames": names, "id": req_id})
        op = self.wait_for(lambda: next((t for t in self.text if t.get("op") == "parameterValues"
                                         and t.get("id") == req_id), None), what=f"parameters {req_id}")
        return {p["name"]: p.get("value") for p in op["parameters"]}

    def set_parameters(self, params: dict[str, Any], req_id: str) -> dict[str, Any]:
        """setParameters with an id; returns {name: value} of the answer (the values now in effect)."""
        self.send_json({"op": "setParameters", "id": req_id, "parameters": [
            {"name": k, "value": v, **({"type": "float64"} if isinstance(v, float) else {})}
            for k, v in params.items()]})
        op = self.wait_for(lambda: next((t for t in self.text if t.get("op") == "parameterValues"
                                         and t.get("id") == req_id), None), what=f"parameters {req_id}")
        return {p["name"]: p.get("value") for p in op["parameters"]}
