"""The benchmarks' subscriber, a process of its own as the relay is: it subscribes to
the given topics and prints one line per message, ``<perf_counter> <topic> <box>:<seq>
<kind>`` (``- -`` for a payload that is not an ``sos`` record), the time taken as the
message is read, before anything else is done with it. ``time.perf_counter`` is the
system's monotonic clock, the same in every process, so the bench compares it with its
own. It prints ``ready`` once subscribed.

    python -m bench.subscriber PORT TOPIC...
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from sosbeacon.device.mqtt import BrokerConfig, Connection
from sosbeacon.device.wire import decode_sos


async def _run(port: int, topics: list[str]) -> None:
    me = f"bench-sub-{os.getpid()}"
    sub = Connection(BrokerConfig(host="127.0.0.1", port=port, client_id=me))
    await sub.connect(clean_start=True)
    for topic in topics:
        await sub.subscribe(topic)
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    while True:
        m = await sub.messages.get()
        now = time.perf_counter()
        sub.ack(m)
        try:
            r = decode_sos(m.payload)
            what = f"{r.box}:{r.seq} {r.kind}"
        except ValueError:
            what = "- -"
        out.write(f"{now!r} {m.topic} {what}\n")
        out.flush()


if __name__ == "__main__":
    asyncio.run(_run(int(sys.argv[1]), sys.argv[2:]))
