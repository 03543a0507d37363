"""The gateway's entry point: the command line (`main`: the flags of every service from
`services.runtime.service_parser`, plus the gateway's own, turned into `GatewaySettings`) and
the service process around a `Gateway` (`build`: an HTTP-registered `ServiceRuntime` whose
start and stop hooks start and stop the gateway). `python -m services.gateway` runs `main`;
its return value is the exit status. Imports `config` and `handlers`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from raftreg.discovery import POLICIES
from services.gateway.config import GatewaySettings
from services.gateway.handlers import Gateway
from services.runtime import (
    ChannelSettings,
    ServiceRuntime,
    ServiceSettings,
    run_service,
    service_parser,
    settings_from_args,
    tokens_from,
)


def build(settings: ServiceSettings, gateway: GatewaySettings) -> ServiceRuntime:
    rt = ServiceRuntime(settings, http=True, register="http")
    gw = Gateway(rt.client, gateway, instance_id=settings.id)
    assert rt.http_app is not None
    gw.add_routes(rt.http_app)
    rt.on_start(gw.start)
    rt.on_stop(gw.stop)
    return rt


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    p = service_parser("gateway", "HTTP/JSON gateway balancing over the user instances.")
    p.add_argument("--policy", default="weighted_round_robin", choices=sorted(POLICIES),
                   help="balancing policy until the config center sets balancer.policy")
    p.add_argument("--user-service", default="user", help="service name of the user instances")
    p.add_argument("--chat-service", default="chat", help="service name of the chat instances")
    p.add_argument("--deadline-ms", type=int, default=1000,
                   help="deadline of one request, retries included (config: deadline_ms)")
    p.add_argument("--attempts", type=int, default=3,
                   help="attempts one request may make (config: retry.attempts)")
    p.add_argument("--config-service", default=None,
                   help="follow the config center's settings of this service (default: the "
                        "--service name); '-' for none")
    p.add_argument("--upstream-token", default=None,
                   help="bearer token sent on every upstream gRPC call (default: the first of "
                        "$RAFTREG_SERVICE_TOKEN; none: no token)")
    p.add_argument("--connect-timeout-ms", type=int, default=2000,
                   help="connect timeout of the upstream channels")
    ns = p.parse_args(argv)
    settings = settings_from_args(ns, env)
    upstream = ns.upstream_token or next(iter(tokens_from([], env)), None)
    config_service = ns.config_service or settings.service
    gw = GatewaySettings(
        user_service=ns.user_service, chat_service=ns.chat_service, policy=ns.policy,
        deadline=ns.deadline_ms / 1000, attempts=ns.attempts,
        config_service=None if config_service == "-" else config_service,
        channel=ChannelSettings(
            token=upstream, connect_timeout_s=ns.connect_timeout_ms / 1000,
            rpc_log_level=settings.rpc_log_level,
        ),
    )
    return run_service(settings, lambda s: build(s, gw))
