#!/usr/bin/env python3
"""Small network helpers for tests/services (standard library only).

  probe.py ports N            print N distinct free TCP ports on 127.0.0.1,
                              one per line, chosen by the kernel (all N
                              sockets are bound at once, so they differ)
  probe.py tcp HOST:PORT      exit 0 if a TCP connection is accepted
  probe.py kafka HOST:PORT    exit 0 if the Kafka broker answers a Metadata
                              request (v1) listing a live broker on PORT, i.e.
                              the broker is registered, unfenced and serving

Every network operation has a timeout (--timeout SECONDS, default 2); the
callers poll these checks against their own deadline.
"""

import socket
import struct
import sys

METADATA_API_KEY = 3
METADATA_VERSION = 1
CORRELATION_ID = 0x4D51  # "MQ"


def free_ports(count):
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def split_hostport(text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError("expected HOST:PORT, got %r" % text)
    return host, int(port)


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed after %d of %d bytes" % (len(data), n))
        data += chunk
    return data


class Reader:
    """Cursor over a response body in Kafka's big-endian encoding."""

    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, fmt):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ValueError("truncated response")
        value = struct.unpack_from(fmt, self.data, self.pos)[0]
        self.pos += size
        return value

    def string(self):
        length = self.take(">h")
        if length < 0:
            return None
        if self.pos + length > len(self.data):
            raise ValueError("truncated string")
        text = self.data[self.pos:self.pos + length].decode("utf-8", "replace")
        self.pos += length
        return text


def metadata_brokers(host, port, timeout):
    """Sends Metadata v1 for all topics; returns [(node_id, host, port)]."""
    client_id = b"mqb-services-probe"
    # Request header v1: api_key, api_version, correlation_id, client_id.
    # Body v1: topics array, -1 (null) meaning "all topics" (never creates one).
    body = struct.pack(">hhih", METADATA_API_KEY, METADATA_VERSION, CORRELATION_ID,
                       len(client_id)) + client_id + struct.pack(">i", -1)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", recv_exact(sock, 4))[0]
        if size < 4 or size > 64 * 1024 * 1024:
            raise ValueError("bad response size %d" % size)
        reader = Reader(recv_exact(sock, size))
    if reader.take(">i") != CORRELATION_ID:
        raise ValueError("correlation id mismatch")
    brokers = []
    for _ in range(reader.take(">i")):
        node_id = reader.take(">i")
        broker_host = reader.string()
        broker_port = reader.take(">i")
        reader.string()  # rack
        brokers.append((node_id, broker_host, broker_port))
    return brokers


def main(argv):
    timeout = 2.0
    args = list(argv)
    if "--timeout" in args:
        i = args.index("--timeout")
        timeout = float(args[i + 1])
        del args[i:i + 2]
    if len(args) != 2:
        sys.stderr.write(__doc__)
        return 2
    cmd, arg = args
    try:
        if cmd == "ports":
            for p in free_ports(int(arg)):
                print(p)
            return 0
        host, port = split_hostport(arg)
        if cmd == "tcp":
            socket.create_connection((host, port), timeout=timeout).close()
            return 0
        if cmd == "kafka":
            brokers = metadata_brokers(host, port, timeout)
            return 0 if any(p == port for _, _, p in brokers) else 1
    except (OSError, ValueError) as exc:
        if cmd == "ports":
            sys.stderr.write("probe.py: %s\n" % exc)
        return 1
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
