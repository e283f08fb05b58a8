"""`serve`: run the OpenAI-compatible embedding / search / augment HTTP server (uvicorn)."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from llm_embedder.cli.app import app
from llm_embedder.cli.basic import (
    MAX_COUNT,
    DeviceOption,
    MaxLengthOption,
    ModelOption,
    TaskFileOption,
    check_choice,
    check_max_length,
    register_task_files,
)


def parse_indexes(specs: list[str] | None) -> dict[str, Path]:
    """``NAME=DIR`` pairs -> {name: dir}; a malformed pair, duplicate name or missing dir is a clear error."""
    indexes: dict[str, Path] = {}
    for spec in specs or []:
        name, sep, directory = spec.partition("=")
        name, directory = name.strip(), directory.strip()
        if not sep or not name or not directory:
            raise ValueError(f"--index must be NAME=DIR, got {spec!r}")
        if name in indexes:
            raise ValueError(f"--index {name!r} given twice")
        path = Path(directory)
        if not path.is_dir():
            raise FileNotFoundError(f"--index {name}: directory not found: {path}")
        indexes[name] = path
    return indexes


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listenable(host: str, port: int) -> None:
    """Refuse a host that does not resolve or an address already in use, before the model loads: uvicorn would
    find out only after loading, and exit 3. Binds as uvicorn does (SO_REUSEADDR) and lets go at once."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise ValueError(f"--host {host!r} does not resolve: {err.strerror}") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as err:
            raise ValueError(f"cannot listen on {host}:{port}: {err.strerror}") from None


def listening_urls(servers: list) -> list[str]:
    """The http:// address of every socket the asyncio servers listen on: the port the OS chose for --port 0."""
    import socket

    urls = []
    for server in servers:
        for sock in server.sockets or []:
            host, port = sock.getsockname()[:2]
            url = f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"
            if url not in urls:
                urls.append(url)
    return urls


@app.command("serve")
def serve_command(
    model: ModelOption = "minilm",
    index: Annotated[
        list[str] | None, typer.Option("--index", help="NAME=DIR of a saved index; repeat for several.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind; loopback unless you mean to expose it.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="TCP port (0: a free one, printed once it listens).")
    ] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="LLM_EMBEDDER_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1/* routes."),
    ] = None,
    model_name: Annotated[
        str | None, typer.Option(help="Model id clients send as `model` (default: the --model value's name).")
    ] = None,
    max_inputs: Annotated[int, typer.Option(min=1, max=MAX_COUNT,
                                            help="Most texts in one request (413 above).")] = 2048,
    max_chars: Annotated[int, typer.Option(min=1, max=MAX_COUNT,
                                           help="Most characters in one text (413 above).")] = 16_384,
    max_batch_tokens: Annotated[int, typer.Option(min=1, max=MAX_COUNT,
                                                  help="Token bound of one dynamic model batch.")] = 8192,
    max_batch_requests: Annotated[
        int, typer.Option(min=1, max=MAX_COUNT,
                          help="Requests merged into one model batch; 1 disables dynamic batching.")
    ] = 256,
    max_wait_ms: Annotated[
        float, typer.Option(min=0.0, help="How long a lone request waits for company before it runs.")
    ] = 5.0,
    max_k: Annotated[int, typer.Option(min=1, max=MAX_COUNT,
                                       help="Largest k accepted by /v1/search and /v1/augment.")] = 1000,
    device: DeviceOption = None,
    batch_size: Annotated[int, typer.Option(min=1, max=MAX_COUNT,
                                            help="Texts per forward pass inside one batch.")] = 64,
    threads: Annotated[
        int | None, typer.Option(min=1, max=MAX_COUNT,
                                 help="CPU threads of the model (torch); 1 suits a busy or shared CPU.")
    ] = None,
    log_level: Annotated[
        str, typer.Option(help="uvicorn log level: critical, error, warning, info, debug, trace.")
    ] = "info",
    max_length: MaxLengthOption = None,
    task_file: TaskFileOption = None,
) -> None:
    """Serve POST /v1/embeddings (OpenAI-compatible, plus `task` and `role`), /v1/search, /v1/augment,
    GET /health, /v1/models and Prometheus /metrics, with dynamic batching of concurrent requests."""
    from llm_embedder.extras import require_extra

    require_extra("serve", "serve")
    import uvicorn
    from uvicorn.config import LOG_LEVELS

    from llm_embedder.embedder import Embedder
    from llm_embedder.serve import ServeSettings, create_app

    check_choice("--log-level", log_level, list(LOG_LEVELS))  # uvicorn would fail on it only once all is loaded
    check_max_length(model, max_length)
    register_task_files(task_file)
    index_dirs = parse_indexes(index)
    check_listenable(host, port)
    console = Console(stderr=True)
    if not is_loopback(host) and not api_key:
        console.print(f"[bold yellow]warning:[/] binding {escape(host)} without --api-key: anyone who can reach it "
                      "can use it")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    embedder = Embedder(model, device=device, batch_size=batch_size, query_max_length=max_length,
                        key_max_length=max_length)
    retrievers = {}
    if index_dirs:
        from llm_embedder.retriever import Retriever

        for name, directory in index_dirs.items():
            retrievers[name] = Retriever.load(directory, embedder=embedder)
            console.print(f"index {name}: {directory} (task {retrievers[name].task})", markup=False, soft_wrap=True)
    settings = ServeSettings(
        model_id=model_name or Path(str(model)).name, api_key=api_key, max_inputs=max_inputs, max_chars=max_chars,
        max_batch_tokens=max_batch_tokens, max_batch_requests=max_batch_requests, max_wait_ms=max_wait_ms,
        max_k=max_k,
    )
    config = uvicorn.Config(create_app(embedder, retrievers, settings), host=host, port=port, log_level=log_level,
                            access_log=log_level == "debug")

    class AnnouncingServer(uvicorn.Server):
        """Says where it serves once it listens: the port the OS chose for --port 0, each address of a host name."""

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                console.print(f"serving model {settings.model_id!r} (dim {embedder.dim}) on "
                              + ", ".join(listening_urls(self.servers)), markup=False, soft_wrap=True)

    server = AnnouncingServer(config)
    try:  # as uvicorn.run
        server.run()
    except KeyboardInterrupt:
        pass
    if not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE; it has logged why
