"""The test broker's own produce → acknowledgement latency: the floor under streamscore's.

Starts Tansu (as the end-to-end harness does), produces small records at a light, fixed rate
with confluent-kafka (idempotent, like streamscore's producer), and prints the delivery-report
latency percentiles for linger.ms = 0 and 5. Every outcome streamscore produces waits for one
such acknowledgement, so its latency percentiles cannot be below these.

    .venv/bin/python benches/e2e/broker_ack.py [--records 3000] [--rate 1000]
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as harness  # noqa: E402  (the harness's broker start/stop and topic creation)

from confluent_kafka import Producer  # noqa: E402

PARTITIONS = 4


def measure(bootstrap: str, linger_ms: int, records: int, rate: float, warmup: int) -> list[float]:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": linger_ms, "enable.idempotence": True})
    # An idempotent producer gets its producer id on a 500 ms retry timer after it connects, and
    # every record handed over before waits for it: deliver one record per partition first, or
    # the first half second of records (500 at 1 000/s, more than --warmup leaves out) measures
    # the producer's start, not the broker (it read as a p99 of ~450 ms before this warm-up).
    for partition in range(PARTITIONS):
        producer.produce("ack", b"warm-up", partition=partition)
    if producer.flush(30) != 0:
        raise SystemExit("the warm-up records were not delivered within 30 s")
    latencies: list[float] = []
    interval = 1.0 / rate
    for i in range(records):
        started = time.perf_counter()
        producer.produce("ack", b"x" * 120, key=str(i).encode(),
                         on_delivery=lambda err, _msg, t0=started: latencies.append(
                             float("inf") if err else time.perf_counter() - t0))
        producer.poll(0)
        time.sleep(max(0.0, interval - (time.perf_counter() - started)))
    producer.flush(30)
    return sorted(latencies[warmup:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=3000)
    ap.add_argument("--rate", type=float, default=1000.0, help="records per second")
    ap.add_argument("--warmup", type=int, default=200, help="first records left out (connection set-up)")
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="streamscore-ack-")
    broker = harness.Broker(workdir)
    try:
        harness.create_topics(broker.bootstrap, ["ack"], PARTITIONS)
        print("| linger.ms | records | p50 ms | p90 ms | p95 ms | p99 ms | max ms |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for linger in (0, 5):
            lat = measure(broker.bootstrap, linger, args.records, args.rate, args.warmup)
            q = lambda f: 1000 * lat[min(len(lat) - 1, int(len(lat) * f))]  # noqa: E731
            print(f"| {linger} | {len(lat)} | {q(.5):.2f} | {q(.9):.2f} | {q(.95):.2f} | {q(.99):.2f} | "
                  f"{1000 * lat[-1]:.2f} |")
        print(f"\nload average {open('/proc/loadavg').read().split()[0]}; broker log: {broker.log_path}")
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
