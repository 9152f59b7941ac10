"""Download throughput from a local server: our resumable, hash-while-downloading transfer vs a plain streamed copy.

    python bench/bench_download.py [--mb 512] [--rounds 3]

A child process serves the metadata (tests/support/fakehub) and the bytes (os.sendfile, like a CDN that costs this
machine no CPU), so the numbers compare the clients, not a Python server. Four ways to
fetch the same file, alternated each round, best-of-N and median reported:
  plain   urllib stream → file with shutil.copyfileobj (1 MiB reads), no checks
  plain+fsync  the same, then fsync (the durability ours has before its rename)
  ours-nohash  core.download.download_file with the hasher replaced by a no-op (the transfer alone)
  ours    core.download.download_file as shipped (sha256 in a second thread, verified, fsync, rename)
Prints the measured ratios: ours/plain throughput (target ≥ 0.9) and the hashing overhead ours vs ours-nohash
(target ≤ 10%). No asserts: numbers from one run on this machine.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REPO, NAME = "Kijai/flux-fp8", "flux1-dev-fp8.safetensors"


def serve(size: int, blob: str, conn) -> None:  # noqa: ANN001 - a multiprocessing pipe end
    """The fake hub for metadata, and a sendfile "CDN" for the bytes: like a real server, it costs our side
    (almost) no CPU, so the numbers compare the clients, not the server."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tests.support.fakehub import FakeHub

    data = os.urandom(size)
    Path(blob).write_bytes(data)
    hub = FakeHub().start()
    hub.add_file(REPO, NAME, data)

    class Cdn(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            rate = float(self.path.partition("rate=")[2] or 0) * 1e6  # bytes/s; 0 = as fast as possible
            start = 0
            if self.headers.get("Range"):
                start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            self.send_header("Content-Length", str(size - start))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            self.wfile.flush()
            with open(blob, "rb") as handle:
                offset, t0 = start, time.perf_counter()
                while offset < size:
                    count = size - offset if not rate else min(size - offset, 1 << 20)
                    offset += os.sendfile(self.connection.fileno(), handle.fileno(), offset, count)
                    if rate:
                        lag = (offset - start) / rate - (time.perf_counter() - t0)
                        if lag > 0:
                            time.sleep(lag)

    cdn = ThreadingHTTPServer(("127.0.0.1", 0), Cdn)
    threading.Thread(target=cdn.serve_forever, daemon=True).start()
    conn.send((hub.endpoint, f"http://127.0.0.1:{cdn.server_address[1]}/blob"))
    conn.recv()  # wait for "stop"
    cdn.shutdown()
    hub.stop()


def plain_copy(url: str, dest: Path, *, durable: bool = False) -> None:
    with urllib.request.urlopen(url) as response, dest.open("wb") as handle:  # noqa: S310 - loopback
        shutil.copyfileobj(response, handle, 1 << 20)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())


class _NoHash:
    def __init__(self, git_size: int | None) -> None:
        pass

    def update(self, block: bytes) -> None:
        pass

    def reset(self) -> None:
        pass

    def finish(self) -> tuple[str, None]:
        return "", None

    class _thread:  # noqa: N801 - mimics the attribute the transfer checks
        @staticmethod
        def is_alive() -> bool:
            return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--link", type=float, action="append",
                        help="also measure over a link capped at this many MB/s (repeatable; default 250)")
    args = parser.parse_args()
    size = args.mb << 20

    work = Path(tempfile.mkdtemp(prefix="bench-download-", dir=ROOT))
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=serve, args=(size, str(work / "blob"), child), daemon=True)
    server.start()
    endpoint, cdn = parent.recv()
    os.environ["HF_ENDPOINT"] = endpoint
    os.environ.pop("HF_HUB_OFFLINE", None)
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

    import lorawizard.core.models.download as download

    started = time.perf_counter()
    remote = download.fetch_metadata(REPO, NAME, token=False)
    meta_s = time.perf_counter() - started
    remote.location = cdn  # the bytes come from the sendfile server
    nohash_remote = download.RemoteFile(**{**remote.__dict__, "sha256": None, "git_sha1": None})
    real_hasher = download._Hasher

    links = [0.0, *(args.link or [250.0])]
    print(f"file {args.mb} MiB, server in a child process (metadata: fake hub at {endpoint}; bytes: sendfile), "
          f"{args.rounds} rounds interleaved, cpus={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    print(f"metadata: first HEAD through huggingface_hub {meta_s * 1000:.0f} ms (includes importing it)")
    try:
        for link in links:
            measure(remote, nohash_remote, cdn, link, size, args.rounds, work, real_hasher)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        parent.send("stop")
        server.join(5)


def measure(remote, nohash_remote, cdn: str, link: float, size: int, rounds: int, folder: Path, real_hasher) -> None:  # noqa: ANN001
    import lorawizard.core.models.download as download

    url = f"{cdn}?rate={link:g}" if link else cdn
    remote.location = nohash_remote.location = url
    wall: dict[str, list[float]] = {"plain": [], "plain+fsync": [], "ours-nohash": [], "ours": []}
    cpu: dict[str, list[float]] = {name: [] for name in wall}
    for _ in range(rounds):
        for name in wall:
            dest = folder / f"{name}.bin"
            dest.unlink(missing_ok=True)
            t0, c0 = time.perf_counter(), time.process_time()
            if name.startswith("plain"):
                plain_copy(url, dest, durable=name == "plain+fsync")
            elif name == "ours-nohash":
                download._Hasher = _NoHash  # type: ignore[misc,assignment]
                try:
                    download.download_file(nohash_remote, dest, token=False)
                finally:
                    download._Hasher = real_hasher  # type: ignore[misc]
            else:
                download.download_file(remote, dest, token=False)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            assert dest.stat().st_size == size
            dest.unlink()

    def rate(seconds: float) -> float:
        return size / seconds / 1e6

    print(f"\n== {'loopback, unlimited (CPU-bound worst case)' if not link else f'link capped at {link:g} MB/s'}")
    for name in wall:
        print(f"  {name:12s} median {rate(statistics.median(wall[name])):7.0f} MB/s  best {rate(min(wall[name])):7.0f} MB/s"
              f"  client CPU {statistics.median(cpu[name]) / (size / 1e9):.2f} s/GB")
    med = {name: statistics.median(values) for name, values in wall.items()}
    best = {name: min(values) for name, values in wall.items()}
    print(f"  throughput ours / plain copy: median {med['plain'] / med['ours']:.2f}x  best {best['plain'] / best['ours']:.2f}x"
          "  (target >= 0.90x)")
    print(f"  throughput ours / plain copy + fsync (same durability): median {med['plain+fsync'] / med['ours']:.2f}x"
          f"  best {best['plain+fsync'] / best['ours']:.2f}x")
    print(f"  hashing overhead (ours vs ours-nohash): median {med['ours'] / med['ours-nohash'] - 1:+.1%}"
          f"  best {best['ours'] / best['ours-nohash'] - 1:+.1%}  (target <= 10%)")

if __name__ == "__main__":
    main()
