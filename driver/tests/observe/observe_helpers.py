"""Helpers of the observe tests: scrape and parse a process's /metrics over real HTTP, find the
address a process bound (it prints it), and a TCP relay that stands between a process and the
API server so a test can cut the process off from it without stopping the shared control plane.

The CSI helpers (the real standalone process, loop drives formatted by us) live in
driver/tests/csi/csi_helpers.py (imported as ``csi.csi_helpers``: driver/tests is on pytest's
pythonpath, see pytest.ini).
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from prometheus_client.parser import text_string_to_metric_families

URL_RE = re.compile(r"metrics and health on (http://\S+)")


def wait_for(what: str, fn: Callable[[], object], timeout: float = 30.0, log: Optional[Path] = None) -> object:
    """Poll ``fn`` until it returns something truthy; fail with ``what`` (and the log tail) otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def metrics_url(log: Path, timeout: float = 30.0) -> str:
    """The URL a process printed when its metrics/health server started."""
    def find() -> str:
        m = URL_RE.search(log.read_text(errors="replace")) if log.exists() else None
        return m.group(1) if m else ""

    return str(wait_for("the metrics address in the log", find, timeout, log))


def get(url: str, timeout: float = 10.0) -> Tuple[int, str]:
    """(status, body) of a GET; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode()


Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def scrape(base: str) -> Samples:
    """Every sample of ``base/metrics``, parsed with prometheus_client's parser: {(name, labels): value}."""
    status, text = get(base + "/metrics")
    assert status == 200, f"/metrics answered {status}: {text[:500]}"
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def series(samples: Samples, name: str, **labels: str) -> List[float]:
    """Values of the samples named ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return [v for (n, lab), v in samples.items() if n == name and want <= set(lab)]


def one(samples: Samples, name: str, **labels: str) -> float:
    found = series(samples, name, **labels)
    assert len(found) == 1, f"expected one {name}{labels}, found {found}"
    return found[0]


class TcpRelay:
    """Listens on 127.0.0.1:<free port> and pipes each connection to ``upstream``; ``cut()`` closes the
    listener and every connection, as a network partition between the process and the API server would."""

    def __init__(self, upstream: Tuple[str, int], port: int = 0) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", port))
        self.port = self._listener.getsockname()[1]
        self._conns: List[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="relay", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _addr = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                if self._closed:
                    client.close()
                    server.close()
                    return
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, []
        self._listener.close()
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
