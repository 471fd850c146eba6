"""The floor: an empty grpc.aio server for the same two OnMessage methods.

It decodes each request (as any real service must) and answers Empty at once, so
`bench/grpc_load.py` can put our per-call cost next to grpc.aio's own in one run.

  .venv/bin/python bench/empty_server.py --port 7001
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import empty_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proto.build import load as load_protos

EMPTY = empty_pb2.Empty()


async def main(port: int) -> None:
    pb = load_protos()

    class Login(pb.login_grpc.UserAuthenticationUserLoggedInServiceServicer):  # type: ignore[misc,name-defined]
        async def OnMessage(self, request: Any, context: Any) -> Any:  # noqa: N802
            return EMPTY

    class Stat(pb.stat_grpc.StatisticStatItemUpdatedServiceServicer):  # type: ignore[misc,name-defined]
        async def OnMessage(self, request: Any, context: Any) -> Any:  # noqa: N802
            return EMPTY

    server = grpc.aio.server(maximum_concurrent_rpcs=2000)
    pb.login_grpc.add_UserAuthenticationUserLoggedInServiceServicer_to_server(Login(), server)
    pb.stat_grpc.add_StatisticStatItemUpdatedServiceServicer_to_server(Stat(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
