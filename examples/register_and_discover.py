"""Register an instance under a lease and discover it, as the reference document does with
etcd: the key /services/user/127.0.0.1:50051 holds {"name", "addr", "version", ...} and goes
away with the lease when the process stops (or dies)."""

import asyncio

from raftreg.client import connect
from raftreg.discovery import Instance, Registration, Resolver


async def main() -> None:
    async with connect() as reg:
        me = Instance("user", "", "127.0.0.1:50051", version="v1", weight=2)
        async with Registration(reg, me, ttl=10) as registration:
            print("registered", registration.key)
            async with Resolver(reg, "user") as users:
                live = await users.wait_for(
                    lambda found: any(i.address == me.address for i in found), timeout=10)
                print("discovered", [(i.id, i.address, i.weight) for i in live])
        # Registration.__aexit__ revoked the lease: the key is gone
        print("after stop", (await reg.get(me.key)).count)


asyncio.run(main())
