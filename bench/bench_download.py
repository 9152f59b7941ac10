"""Download throughput from a local server: our resumable, hash-while-downloading transfer vs a plain streamed copy.

    python bench/bench_download.py [--mb 512] [--rounds 3]

A child process serves the metadata (tests/fakehub) and the bytes (os.sendfile, like a CDN that costs this
machine no CPU), so the numbers compare the clients, not a Python server. Three ways to
fetch the same file, alternated each round, best-of-N and median reported:
  plain   urllib stream → file with shutil.copyfileobj (1 MiB reads), no checks
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

    from tests.fakehub import FakeHub

    data = os.urandom(size)
    Path(blob).write_bytes(data)
    hub = FakeHub().start()
    hub.add_file(REPO, NAME, data)

    class Cdn(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
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
                offset = start
                while offset < size:
                    offset += os.sendfile(self.connection.fileno(), handle.fileno(), offset, size - offset)

    cdn = ThreadingHTTPServer(("127.0.0.1", 0), Cdn)
    threading.Thread(target=cdn.serve_forever, daemon=True).start()
    conn.send((hub.endpoint, f"http://127.0.0.1:{cdn.server_address[1]}/blob"))
    conn.recv()  # wait for "stop"
    cdn.shutdown()
    hub.stop()


def plain_copy(url: str, dest: Path) -> None:
    with urllib.request.urlopen(url) as response, dest.open("wb") as handle:  # noqa: S310 - loopback
        shutil.copyfileobj(response, handle, 1 << 20)


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
    parser.add_argument("--rounds", type=int, default=3)
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

    import lorawizard.core.download as download

    started = time.perf_counter()
    remote = download.fetch_metadata(REPO, NAME, token=False)
    meta_s = time.perf_counter() - started
    remote.location = cdn  # the bytes come from the sendfile server
    nohash_remote = download.RemoteFile(**{**remote.__dict__, "sha256": None, "git_sha1": None})
    real_hasher = download._Hasher

    times: dict[str, list[float]] = {"plain": [], "ours-nohash": [], "ours": []}
    folder = work
    try:
        for _ in range(args.rounds):
            for name in times:
                dest = folder / f"{name}.bin"
                dest.unlink(missing_ok=True)
                t0 = time.perf_counter()
                if name == "plain":
                    plain_copy(remote.location, dest)
                elif name == "ours-nohash":
                    download._Hasher = _NoHash  # type: ignore[misc,assignment]
                    try:
                        download.download_file(nohash_remote, dest, token=False)
                    finally:
                        download._Hasher = real_hasher  # type: ignore[misc]
                else:
                    download.download_file(remote, dest, token=False)
                times[name].append(time.perf_counter() - t0)
                assert dest.stat().st_size == size
                dest.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    parent.send("stop")
    server.join(5)

    def rate(seconds: float) -> float:
        return size / seconds / 1e6

    print(f"file {args.mb} MiB over {endpoint} (server in a child process), {args.rounds} rounds, cpus={os.cpu_count()}")
    print(f"metadata (one HEAD through huggingface_hub): {meta_s * 1000:.0f} ms")
    for name, values in times.items():
        print(f"  {name:12s} best {rate(min(values)):7.0f} MB/s   median {rate(statistics.median(values)):7.0f} MB/s")
    best = {name: min(values) for name, values in times.items()}
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"throughput ours / plain copy: best {best['plain'] / best['ours']:.2f}x   "
          f"median {median['plain'] / median['ours']:.2f}x   (target >= 0.90x)")
    print(f"hashing overhead ours vs transfer alone: best {best['ours'] / best['ours-nohash'] - 1:+.1%}   "
          f"median {median['ours'] / median['ours-nohash'] - 1:+.1%}   (target <= 10%)")


if __name__ == "__main__":
    main()
