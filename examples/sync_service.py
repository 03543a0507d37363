"""The same from code without an event loop (a Flask or Django process): a blocking client,
registration and resolver, and a watch as a plain iterator."""

from raftreg.client import connect_sync
from raftreg.discovery import Instance, SyncRegistration, SyncResolver

with connect_sync() as reg:
    me = Instance("orders", "", "127.0.0.1:8081", version="v1")
    with SyncRegistration(reg, me, ttl=10), SyncResolver(reg, "orders") as orders:
        found = orders.wait_for(lambda f: any(i.address == me.address for i in f), 10)
        print("discovered", [i.address for i in found])
        start = reg.get("/config/orders/", prefix=True).revision + 1
        reg.put("/config/orders/retries", "3")
        with reg.watch("/config/orders/", prefix=True, start_revision=start) as changes:
            batch = changes.next(timeout=10)
            print("changed", [(e.kv.key.decode(), e.kv.value.decode()) for e in batch.events])
    print("registered afterwards:", reg.get(me.key).count)
