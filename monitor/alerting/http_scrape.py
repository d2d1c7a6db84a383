"""A small asyncio HTTP/1.1 GET client for scraping many ``/metrics`` endpoints at once.

Why not httpx here: on a 2-core box httpx.AsyncClient spends ~3 ms of CPU per request, so a
100-node cycle took ~300 ms before any parsing; plain asyncio streams take ~0.2 ms. This client
does exactly what a scrape needs — keep-alive connection per node, ``Content-Length`` or
chunked bodies (or read-to-close), http and https, one overall timeout — and nothing else
(no redirects, no compression: it sends no ``Accept-Encoding``).
"""
from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit


class ScrapeError(Exception):
    pass


class Endpoint:
    def __init__(self, url: str, headers: dict[str, str] | None = None, ssl_context: ssl.SSLContext | None = None):
        p = urlsplit(url)
        if p.scheme not in ("http", "https"):
            raise ValueError(f"unsupported scheme in {url!r}")
        self.url = url
        self.host = p.hostname or "127.0.0.1"
        self.tls = p.scheme == "https"
        self.port = p.port or (443 if self.tls else 80)
        self.path = (p.path or "/") + (f"?{p.query}" if p.query else "")
        host_header = p.netloc.rsplit("@", 1)[-1]
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.request = (f"GET {self.path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: seekwatch-alertd\r\n"
                        f"Accept: text/plain;version=0.0.4\r\n{extra}Connection: keep-alive\r\n\r\n").encode("latin-1")
        self.ssl_context = ssl_context
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:
                pass
        self.reader = self.writer = None

    async def _connect(self) -> None:
        ctx = (self.ssl_context or ssl.create_default_context()) if self.tls else None
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, ssl=ctx,
                                                                 limit=1 << 22)

    async def _once(self) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        self.writer.write(self.request)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ScrapeError(f"bad status line {lines[0]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for ln in lines[1:]:
            if ":" in ln:
                k, v = ln.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        keep = headers.get("connection", "").lower() != "close" and parts[0] == "HTTP/1.1"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks = []
            while True:
                size_line = await self.reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while (await self.reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    break
                chunks.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            body = b"".join(chunks)
        elif "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        else:
            body = await self.reader.read(-1)
            keep = False
        if "gzip" in headers.get("content-encoding", "").lower():
            import gzip

            body = gzip.decompress(body)
        if not keep:
            self.close()
        return status, body

    async def get(self, timeout: float) -> tuple[int, bytes]:
        async def attempt() -> tuple[int, bytes]:
            reused = self.writer is not None
            if not reused:
                await self._connect()
            try:
                return await self._once()
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                self.close()
                if not reused:
                    raise ScrapeError(f"{type(exc).__name__}: {exc}") from None
            # a kept-alive connection the server had closed: reconnect once
            await self._connect()
            return await self._once()

        try:
            return await asyncio.wait_for(attempt(), timeout)
        except asyncio.TimeoutError:
            self.close()
            raise ScrapeError(f"timed out after {timeout:g}s") from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            self.close()
            raise ScrapeError(f"{type(exc).__name__}: {exc}") from None
        except ScrapeError:
            self.close()
            raise
