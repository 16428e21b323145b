"""Serve ``benchmarks/peers/channels_app.py`` on uvicorn (its defaults; uvicorn[standard]).

    python -m benchmarks.peers.serve_channels --bind 127.0.0.1:0

Binds the socket itself (port 0: any free port), prints ``... at http://HOST:PORT`` once it
listens, then runs uvicorn on it. uvicorn's defaults otherwise: with uvicorn[standard]
installed that is uvloop, httptools and the websockets library.
"""

from __future__ import annotations

import argparse
import socket

import uvicorn

from .._instrument import raise_fd_limit

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bind", default="127.0.0.1:0", help="host:port (port 0: any free port)")
    args = parser.parse_args()
    host, _, port = args.bind.rpartition(":")
    raise_fd_limit()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(2048)  # uvicorn's default backlog
    config = uvicorn.Config(
        "benchmarks.peers.channels_app:application", log_level="warning", access_log=False, lifespan="off"
    )
    print(
        f"Channels 4 on uvicorn {uvicorn.__version__} serving at http://{host}:{sock.getsockname()[1]}",
        flush=True,
    )
    uvicorn.Server(config).run(sockets=[sock])
