"""A TCP proxy that can freeze the server behind it, as SIGSTOP would.

A stopped postmaster, a stalled disk or a network partition all look the
same from the client: connections are accepted (the kernel completes the
handshake), sockets stay open, and no byte comes back. Stopping the shared
PostgreSQL would hang everyone's tests, so the tests freeze this proxy
instead: it keeps accepting connections and keeps the existing ones open,
but while frozen it forwards nothing in either direction, not even a close.
Thawing delivers what was held, as a server resumed by SIGCONT would read
what its kernel buffered.
"""

import asyncio
import contextlib
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


class FrozenProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        # A host that is a directory names PostgreSQL's Unix socket there,
        # as in the embedded server's URLs (`?host=/path/to/pg&port=5432`).
        self.target = (target_host, target_port)
        self._thawed = asyncio.Event()
        self._thawed.set()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @classmethod
    async def in_front_of(cls, url: str) -> "FrozenProxy":
        """A started proxy in front of the server a postgresql:// URL names."""
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        host = query.get("host") or parts.hostname or "127.0.0.1"
        proxy = cls(host, int(query.get("port") or parts.port or 5432))
        await proxy.start()
        return proxy

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def url(self, url: str) -> str:
        """The same URL (user, database, options), through this proxy."""
        parts = urlsplit(url)
        user = parts.netloc.rpartition("@")[0]
        netloc = f"{user}@127.0.0.1:{self.port}" if user else f"127.0.0.1:{self.port}"
        query = [(k, v) for k, v in parse_qsl(parts.query) if k not in {"host", "port"}]
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))

    @property
    def frozen(self) -> bool:
        return not self._thawed.is_set()

    def freeze(self) -> None:
        self._thawed.clear()

    def thaw(self) -> None:
        self._thawed.set()

    async def close(self) -> None:
        self.thaw()
        if self._server is not None:
            self._server.close()
        for task in self._pipes:
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self._writers.add(client_w)
        host, port = self.target
        try:
            if host.startswith("/"):
                server_r, server_w = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
            else:
                server_r, server_w = await asyncio.open_connection(host, port)
        except OSError:
            client_w.close()
            return
        self._writers.add(server_w)
        for reader, writer in ((client_r, server_w), (server_r, client_w)):
            task = asyncio.create_task(self._pipe(reader, writer, (client_w, server_w)))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        both: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while True:
                await self._thawed.wait()
                data = await reader.read(65536)
                # Bytes (or the end of the stream) that arrive while frozen
                # wait here: a stopped process reads nothing, and closes nothing.
                await self._thawed.wait()
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            for w in both:
                with contextlib.suppress(Exception):
                    w.close()
