"""The example chat service: `ChatService.SyncStream`, a bidirectional stream (reference
document, 2.3) that answers every message, in order and as soon as it arrives, with
`"Echo: " + content`, the server's time in milliseconds since the epoch and `served_by` = this
instance's id. The stream ends when the client half-closes.

`python -m services.chat --id c1 --registry raftreg://127.0.0.1:23791` registers as service
`chat` with its gRPC address.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc.aio

from services.pb import chat_pb2, chat_pb2_grpc
from services.runtime import (
    ServiceRuntime,
    ServiceSettings,
    run_service,
    service_parser,
    settings_from_args,
)

ECHO_PREFIX = "Echo: "


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    def __init__(self, instance_id: str) -> None:
        self._id = instance_id

    async def SyncStream(
        self,
        request_iterator: AsyncIterator[chat_pb2.Message],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[chat_pb2.Message]:
        async for msg in request_iterator:
            yield chat_pb2.Message(
                content=ECHO_PREFIX + msg.content, timestamp=now_ms(), served_by=self._id
            )


def build(settings: ServiceSettings) -> ServiceRuntime:
    rt = ServiceRuntime(settings, health_services=["example.ChatService"])
    chat_pb2_grpc.add_ChatServiceServicer_to_server(ChatServicer(settings.id), rt.grpc_server)
    return rt


def main(argv: Sequence[str] | None = None) -> int:
    p = service_parser("chat", "The example ChatService (bidirectional gRPC stream).")
    return run_service(settings_from_args(p.parse_args(argv)), build)


if __name__ == "__main__":
    sys.exit(main())
