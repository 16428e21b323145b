"""Baseline: ``GET /hello`` on bare Trio + h11, one task per connection, keep-alive.

The floor of an HTTP/1.1 server in pure Python on Trio: ``trio.serve_tcp``, one
``h11.Connection`` per connection driven from the connection's own task, the body of
``benchmarks/app.py`` (``Hello world! You asked for <path>``; 200 for ``/hello``, 404
otherwise). No timeouts, no limits, no date or server header: nothing a production server
would add, so it bounds what the h11 route can reach.

    python -m benchmarks.bare_h11 --bind 127.0.0.1:0
"""

from __future__ import annotations

import argparse
from functools import partial

import h11
import trio

from ._instrument import install


async def handle(stream: trio.SocketStream) -> None:
    connection = h11.Connection(h11.SERVER)
    path = "/"
    try:
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Request):
                path = event.target.decode("ascii", "replace").partition("?")[0]
            elif isinstance(event, h11.EndOfMessage):
                body = f"Hello world! You asked for {path}".encode()
                response = h11.Response(
                    status_code=200 if path == "/hello" else 404,
                    headers=[("content-type", "text/plain"), ("content-length", str(len(body)))],
                )
                await stream.send_all(
                    connection.send(response)
                    + connection.send(h11.Data(data=body))
                    + connection.send(h11.EndOfMessage())  # type: ignore[operator]
                )
                if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                    return
                connection.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
    except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        return
    finally:
        await trio.aclose_forcefully(stream)


async def main(host: str, port: int) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, port, host=host))
        bound = listeners[0].socket.getsockname()[1]
        print(f"bare trio + h11 serving at http://{host}:{bound}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bind", default="127.0.0.1:0", help="host:port (port 0: any free port)")
    args = parser.parse_args()
    bind_host, _, bind_port = args.bind.rpartition(":")
    install()
    try:
        trio.run(main, bind_host, int(bind_port))
    except KeyboardInterrupt:
        pass
