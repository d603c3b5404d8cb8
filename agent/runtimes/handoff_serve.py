"""Start a runtime's own OpenAI server on a port that a second server may share.

``python -m agent.runtimes.handoff_serve llama-cpp <llama_cpp.server args>`` and
``... mlx-lm <mlx_lm server args>`` run exactly the server ``python -m llama_cpp.server`` /
``python -m mlx_lm server`` would run (same arguments, same app), with one difference: the
listening socket sets ``SO_REUSEPORT``. That lets the agent start a new model version
*beside* the old one on the same port, prove it, and only then stop the old one, so
clients see no gap (a blue/green swap without a proxy). Runs in the workload process, never
in the agent.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence
from typing import Any


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket that other SO_REUSEPORT sockets may share (listen() is left to
    the server, which passes its own backlog)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def serve_llama_cpp(argv: Sequence[str]) -> int:
    """``llama_cpp.server.__main__`` without the config file, bound with SO_REUSEPORT."""
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
    from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings

    parser = argparse.ArgumentParser(prog="handoff_serve llama-cpp")
    add_args_from_model(parser, Settings)
    args = parser.parse_args(list(argv))
    server_settings: Any = parse_model_from_args(ServerSettings, args)
    model_settings: list[Any] = [parse_model_from_args(ModelSettings, args)]
    # The model loads here, before the socket exists: a server that accepts connections
    # can answer them.
    app = create_app(server_settings=server_settings, model_settings=model_settings)
    sock = reuseport_socket(server_settings.host, int(server_settings.port))
    # No access log: the agent's health checks would fill the workload log with it.
    config = uvicorn.Config(
        app, host=server_settings.host, port=int(server_settings.port), access_log=False
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def serve_mlx_lm(argv: Sequence[str]) -> int:
    """``mlx_lm server``: its ThreadingHTTPServer binds with SO_REUSEPORT."""
    from http.server import ThreadingHTTPServer

    from mlx_lm import server

    ThreadingHTTPServer.allow_reuse_port = True  # this process only: it is the model server
    sys.argv = ["mlx_lm.server", *argv]
    server.main()  # type: ignore[no-untyped-call]
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("llama-cpp", "mlx-lm"):
        sys.stderr.write(
            "usage: python -m agent.runtimes.handoff_serve {llama-cpp|mlx-lm} ARGS...\n"
        )
        return 2
    if args[0] == "llama-cpp":
        return serve_llama_cpp(args[1:])
    return serve_mlx_lm(args[1:])


if __name__ == "__main__":
    sys.exit(main())
