"""Put and read configuration from Python (asyncio). Endpoints: RAFTREG_ENDPOINTS, else the
client addresses in ./cluster.toml, else 127.0.0.1:2379 (`raftreg dev`)."""

import asyncio

from raftreg.client import connect


async def main() -> None:
    async with connect() as reg:
        await reg.put("/config/user/timeout_ms", "250")
        res = await reg.get("/config/user/", prefix=True)
        print(res.revision, [(kv.key.decode(), kv.value.decode()) for kv in res.kvs])


asyncio.run(main())
