"""Time to first byte of new tunnels: connect to PORT, send one byte, read its echo, close; COUNT times one
after another after WARMUP untimed ones. Prints the p50 and p99 in microseconds."""
import socket
import sys
import time

port, count, warmup = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
samples = []
for index in range(warmup + count):
    started = time.perf_counter_ns()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(b"x")
    if sock.recv(1) != b"x":
        sys.exit("no echo through port %d" % port)
    elapsed = time.perf_counter_ns() - started
    sock.close()
    if index >= warmup:
        samples.append(elapsed / 1000)
samples.sort()
print("%.0f %.0f" % (samples[len(samples) // 2], samples[min(len(samples) - 1, int(len(samples) * 0.99))]))
