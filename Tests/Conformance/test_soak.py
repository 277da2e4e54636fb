"""Churn: tunnels opened and closed without pause, of random sizes, while the edge is killed (-9) and restarted
at random. It must end with flat memory and descriptors in the relay and the client, no byte corrupted in any
tunnel that completed, and every interrupted tunnel ended (none left hanging). HYRELAY_SOAK_MINUTES sets the
length: half a minute in scripts/test.sh, 30 in scripts/long-tests.sh."""
import os
import random
import signal
import threading
import time

import agents
from conftest import free_port

MINUTES = float(os.environ.get("HYRELAY_SOAK_MINUTES", "0.5"))
WORKERS = 8


def test_churn_with_edges_killed_ends_flat_and_byte_exact(tmp_path):
    relay = agents.start_relay(tmp_path, ["soak"])
    url = "ws://127.0.0.1:%d" % relay.port
    target = agents.TcpServer("echo")
    spec = "soak:127.0.0.1:%d" % target.port
    edge = {"process": agents.start_edge(tmp_path, url, [spec])}
    port = free_port()
    client = agents.start_client(tmp_path, url, ["127.0.0.1:%d:soak" % port], [port])
    stats = {"complete": 0, "interrupted": 0, "corrupted": 0, "bytes": 0, "kills": 0}
    # (start, end) of every interrupted tunnel, and of every span from a kill until the new edge was online.
    interrupted, outages = [], []
    lock = threading.Lock()
    stop = threading.Event()
    generator = random.Random(20261201)

    def churn(seed):
        local = random.Random(seed)
        while not stop.is_set():
            size = int(2 ** local.uniform(0, 21))  # 1 B to 2 MiB, log-uniform
            payload = local.randbytes(size)
            started = time.monotonic()
            try:
                sent, received, count = agents.echo_roundtrip(port, payload, chunk=64 * 1024)
            except OSError:
                sent, received, count = None, None, -1
            with lock:
                if count == size:
                    stats["complete" if sent == received else "corrupted"] += 1
                    stats["bytes"] += size
                else:
                    stats["interrupted"] += 1
                    interrupted.append((started, time.monotonic()))
            if count != size:
                time.sleep(0.05)  # the edge is down: the relay refuses at once; no need to spin

    def killer():
        while not stop.wait(generator.uniform(3, 10) * max(1.0, MINUTES / 5)):
            killed = time.monotonic()
            edge["process"].popen.send_signal(signal.SIGKILL)
            edge["process"].popen.wait()
            edge["process"] = agents.start_edge(tmp_path, url, [spec])
            with lock:
                stats["kills"] += 1
                outages.append((killed, time.monotonic() + 1))

    try:
        workers = [threading.Thread(target=churn, args=(index,)) for index in range(WORKERS)]
        for worker in workers:
            worker.start()
        # The baseline once the churn is warm: buffers and pools sized, the first tunnels' allocations made.
        time.sleep(min(20.0, MINUTES * 60 * 0.2))
        baseline = {name: (agents.rss(process.popen.pid), agents.fds(process.popen.pid))
                    for name, process in (("relay", relay), ("client", client))}
        chaos = threading.Thread(target=killer)
        chaos.start()
        time.sleep(MINUTES * 60)
        stop.set()
        chaos.join(60)
        for worker in workers:
            worker.join(180)
            assert not worker.is_alive(), "a tunnel hung"
        time.sleep(2)
        after = {name: (agents.rss(process.popen.pid), agents.fds(process.popen.pid))
                 for name, process in (("relay", relay), ("client", client))}
        print("soak %.1f min: %d tunnels complete (%.0f MiB), %d interrupted by %d edge kills, %d corrupted; "
              "RSS MiB relay %.1f -> %.1f, client %.1f -> %.1f; fds relay %d -> %d, client %d -> %d" % (
                  MINUTES, stats["complete"], stats["bytes"] / 2 ** 20, stats["interrupted"], stats["kills"],
                  stats["corrupted"], baseline["relay"][0] / 2 ** 20, after["relay"][0] / 2 ** 20,
                  baseline["client"][0] / 2 ** 20, after["client"][0] / 2 ** 20, baseline["relay"][1],
                  after["relay"][1], baseline["client"][1], after["client"][1]))
        assert stats["corrupted"] == 0
        assert stats["kills"] >= 1 and stats["complete"] > 2 * stats["interrupted"]
        # Every interrupted tunnel was open while an edge was down (through the killed one, or refused before the
        # new one was online); none failed on a healthy path.
        unexplained = [span for span in interrupted
                       if not any(start <= span[1] and span[0] <= end for start, end in outages)]
        assert not unexplained, unexplained[:5]
        for name in ("relay", "client"):
            (rss_before, fds_before), (rss_after, fds_after) = baseline[name], after[name]
            assert rss_after - rss_before < 24 << 20, (name, rss_before, rss_after)
            assert fds_after <= fds_before + 4, (name, fds_before, fds_after)
    finally:
        stop.set()
        agents.stop_all(client, edge["process"], relay)
        target.close()
