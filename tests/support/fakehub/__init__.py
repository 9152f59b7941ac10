"""FakeHub: a test double of the Hugging Face Hub — a real HTTP server on 127.0.0.1, reached through HF_ENDPOINT.

Standard library only (it never imports huggingface_hub). Two loopback servers: the "hub" (the /resolve and /api
routes huggingface_hub uses) and a "cdn" on another port (another origin, like the real CDN), which the hub's 302
points at for LFS files. Headers follow what huggingface_hub 2.4 needs (X-Repo-Commit, X-Linked-Etag,
X-Linked-Size, X-Error-Code, X-Error-Message).

Fault injection, set by a test between calls:
  drop_after[path] = n     the next GET of the file's bytes stops after n bytes (connection closed)
  down_after_drop = True   ...and from then on the server is down (a hub that goes away mid-file)
  expire_cdn = k           the next k CDN GETs answer 403 "Request has expired" (a signed URL timed out)
  corrupt[path] = k        the next k GETs serve flipped bytes (same size); k = -1: always
  throttle_bps = n         bytes per second for file bodies (to kill a client mid-way)
  ignore_range = True      answer 200 to Range requests
  down = True              every connection is closed without an answer
  cut_after_commits = n    after n more commits the hub goes down (a connection cut in the middle of a publish)

Publishing (the routes `HfApi.create_repo` / `create_commit` call with Xet off, `HF_HUB_DISABLE_XET`): whoami-v2
with the token's role, `POST /api/repos/create` (401 no/bad token, 403 read token or someone else's namespace,
409 exists), `POST /api/validate-yaml`, `POST /api/models/{repo}/preupload/{rev}`, the LFS batch API
`POST /{repo}.git/info/lfs/objects/batch` (basic transfer) → `PUT /lfs-upload/{oid}` → `POST /lfs-verify`, and
`POST /api/models/{repo}/commit/{rev}` (ndjson). Private repositories are visible to their owner only. Xet CAS is
not emulated.
`log` holds every request: role, method, path, range, auth, status, sent (bytes of body sent).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeFile:
    path: str
    data: bytes
    lfs: bool

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else git_blob_sha1(self.data)

    def tree_entry(self) -> dict:
        entry: dict = {"type": "file", "oid": git_blob_sha1(self.data), "size": self.size, "path": self.path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": 130}
        return entry


@dataclass
class FakeRepo:
    repo_id: str
    files: dict[str, FakeFile] = field(default_factory=dict)
    gated: bool = False
    private: bool = False
    commits: list[str] = field(default_factory=list)  # commit summaries, oldest first

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/", 1)[0]

    @property
    def commit(self) -> str:
        digest = hashlib.sha1()
        for path in sorted(self.files):
            digest.update(path.encode() + b"\0" + self.files[path].etag.encode())
        return digest.hexdigest()


class FakeHub:
    def __init__(self, *, lfs_threshold: int = 1024) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.lfs_threshold = lfs_threshold
        self.tokens: dict[str, str] = {}  # token → user
        self.roles: dict[str, str] = {}  # token → "read" | "write"
        self.orgs: dict[str, set[str]] = {}  # user → organisations they may write to
        self.uploads: dict[str, bytes] = {}  # LFS objects uploaded (sha256 → bytes), not yet in a commit
        self.cut_after_commits: int | None = None
        self.access: dict[str, set[str]] = {}  # gated repo → users with an accepted license
        self.drop_after: dict[str, int] = {}
        self.corrupt: dict[str, int] = {}
        self.throttle_bps: int | None = None
        self.ignore_range = False
        self.down = False
        self.down_after_drop = False
        self.expire_cdn = 0
        self.log: list[dict] = []
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []
        self.endpoint = self.cdn = ""

    def add_file(self, repo_id: str, path: str, data: bytes, *, gated: bool = False) -> FakeFile:
        repo = self.repos.setdefault(repo_id, FakeRepo(repo_id))
        repo.gated = repo.gated or gated
        repo.files[path] = FakeFile(path, data, len(data) >= self.lfs_threshold)
        return repo.files[path]

    def add_token(self, token: str, user: str, *, gated_repos: tuple[str, ...] = (), role: str = "read",
                  orgs: tuple[str, ...] = ()) -> None:
        self.tokens[token] = user
        self.roles[token] = role
        self.orgs.setdefault(user, set()).update(orgs)
        for repo in gated_repos:
            self.access.setdefault(repo, set()).add(user)

    def start(self) -> FakeHub:
        for role in ("hub", "cdn"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, role))
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, args=(0.05,), name=f"fakehub-{role}", daemon=True).start()
            self._servers.append(server)
            url = f"http://127.0.0.1:{server.server_address[1]}"
            if role == "hub":
                self.endpoint = url
            else:
                self.cdn = url
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()

    def requests(self, **match: object) -> list[dict]:
        time.sleep(0.05)  # the server fills in status/sent just after the client got its bytes
        with self._lock:
            return [e for e in self.log if all(e.get(k) == v for k, v in match.items())]

    def sent(self, filename: str) -> int:
        """Body bytes served for a file (over the CDN and the hub)."""
        return sum(e["sent"] for e in self.requests() if e["method"] == "GET" and e.get("file") == filename)

    def blob(self, sha256: str) -> FakeFile | None:
        for repo in self.repos.values():
            for f in repo.files.values():
                if f.lfs and f.sha256 == sha256:
                    return f
        return None

    def can_write(self, token: str | None, namespace: str) -> bool:
        user = self.tokens.get(token or "")
        return user is not None and self.roles.get(token or "") == "write" and (
            namespace == user or namespace in self.orgs.get(user, set()))

    def can_read(self, user: str | None, repo: FakeRepo) -> bool:
        return not repo.private or (user is not None and (repo.namespace == user or repo.namespace in self.orgs.get(user, set())))


def _handler(hub: FakeHub, role: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._dispatch(head=True)

        def do_GET(self) -> None:
            self._dispatch(head=False)

        def do_POST(self) -> None:
            self._dispatch(head=False)

        def do_PUT(self) -> None:
            self._dispatch(head=False)

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def _token(self) -> str | None:
            auth = self.headers.get("Authorization")
            return auth.split(" ", 1)[-1].strip() if auth else None

        # -- helpers
        def _user(self) -> tuple[str | None, bool]:
            auth = self.headers.get("Authorization")
            if not auth:
                return None, False
            return hub.tokens.get(auth.split(" ", 1)[-1].strip()), True

        def _send(self, status: int, headers: dict, body: bytes, head: bool) -> int:
            self.send_response(status)
            headers = {"Date": formatdate(usegmt=True), "X-Request-Id": f"fake-{time.monotonic_ns()}", **headers}
            for key, value in headers.items():
                self.send_header(key, str(value))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body and not head:
                self.wfile.write(body)
            return status

        def _error(self, status: int, code: str | None, message: str, head: bool, extra: dict | None = None) -> int:
            headers = {"Content-Type": "application/json", "X-Error-Message": message, **(extra or {})}
            if code:
                headers["X-Error-Code"] = code
            return self._send(status, headers, json.dumps({"error": message}).encode(), head)

        def _json(self, obj: object, head: bool) -> int:
            return self._send(200, {"Content-Type": "application/json"}, json.dumps(obj).encode(), head)

        def _gate(self, repo: FakeRepo, head: bool) -> int | None:
            user, sent_auth = self._user()
            if sent_auth and user is None:
                return self._error(401, None, "Invalid credentials in Authorization header", head)
            if repo.gated and user not in hub.access.get(repo.repo_id, set()):
                if user is None:
                    return self._error(401, "GatedRepo", f"Access to model {repo.repo_id} is restricted. You must "
                                       "have access to it and be authenticated to access it. Please log in.", head)
                return self._error(403, "GatedRepo", f"Access to model {repo.repo_id} is restricted and you are not "
                                   f"in the authorized list. Visit {hub.endpoint}/{repo.repo_id} to ask for access.",
                                   head)
            return None

        def _content(self, f: FakeFile, head: bool, entry: dict, extra: dict | None = None) -> tuple[int, int]:
            entry["file"] = f.path.rsplit("/", 1)[-1]
            data = f.data
            count = hub.corrupt.get(f.path, 0)
            if count and not head:
                data = bytes(b ^ 0xFF for b in data)
                if count > 0:
                    hub.corrupt[f.path] = count - 1
            start, status, headers = 0, 200, {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
                                              "ETag": f'"{f.etag}"', **(extra or {})}
            wanted = self.headers.get("Range")
            if wanted and not hub.ignore_range:
                start = int(wanted.split("=", 1)[1].split("-", 1)[0])
                if start >= len(data):
                    return self._send(416, {"Content-Range": f"bytes */{len(data)}"}, b"", head), 0
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            body = memoryview(data)[start:]
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if head:
                return status, 0
            limit = hub.drop_after.pop(f.path, None)
            sent, t0 = 0, time.monotonic()
            try:
                while sent < len(body):
                    n = 256 * 1024 if limit is None else min(64 * 1024, limit - sent)
                    if n <= 0:
                        break
                    self.wfile.write(body[sent : sent + n])
                    sent += min(n, len(body) - sent)
                    entry["sent"] = sent
                    if hub.throttle_bps:
                        lag = sent / hub.throttle_bps - (time.monotonic() - t0)
                        if lag > 0:
                            time.sleep(lag)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass
            if sent < len(body):
                self.close_connection = True
                if limit is not None and hub.down_after_drop:
                    hub.down = True
            return status, sent

        def _dispatch(self, head: bool) -> None:
            entry = {"role": role, "method": self.command, "path": self.path, "range": self.headers.get("Range"),
                     "auth": "Authorization" in self.headers, "status": None, "sent": 0}
            with hub._lock:
                hub.log.append(entry)
            if hub.down:
                self.close_connection = True
                entry["status"] = "dropped"
                return
            status, sent = self._route(head, entry)
            entry["status"] = status
            entry["sent"] = sent

        def _route(self, head: bool, entry: dict) -> tuple[int, int]:
            parsed = urllib.parse.urlsplit(self.path)
            parts = [urllib.parse.unquote(p) for p in parsed.path.split("/")[1:]]
            if role == "cdn":
                if hub.expire_cdn > 0 and not head:
                    hub.expire_cdn -= 1
                    return self._error(403, None, "Request has expired", head), 0
                f = hub.blob(parts[1]) if len(parts) == 2 and parts[0] == "cdn" else None
                if f is None:
                    return self._error(404, None, "NoSuchKey", head), 0
                return self._content(f, head, entry)
            if parts[:1] == ["api"]:
                return self._api(parts[1:], head), 0
            if parts[:1] in (["lfs-upload"], ["lfs-verify"]) or parts[-4:] == ["info", "lfs", "objects", "batch"]:
                return self._lfs(parts, head), 0
            if len(parts) >= 5 and parts[2] == "resolve":
                repo_id, rev, path = f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])
                user, sent_auth = self._user()
                if sent_auth and user is None:
                    return self._error(401, None, "Invalid credentials in Authorization header", head), 0
                repo = hub.repos.get(repo_id)
                if repo is None or not hub.can_read(user, repo):
                    return self._error(404, "RepoNotFound", "Repository not found", head), 0
                denied = self._gate(repo, head)
                if denied:
                    return denied, 0
                if rev not in ("main", repo.commit):
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head), 0
                f = repo.files.get(path)
                if f is None:
                    return self._error(404, "EntryNotFound", f"{path} does not exist on {rev!r}", head,
                                       {"X-Repo-Commit": repo.commit}), 0
                meta = {"X-Repo-Commit": repo.commit, "ETag": f'"{f.etag}"'}
                if f.lfs:
                    location = f"{hub.cdn}/cdn/{f.sha256}?X-Signature=fake"
                    meta.update({"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": f.size, "Location": location})
                    return self._send(302, meta, b"Found. Redirecting to " + location.encode(), head), 0
                return self._content(f, head, entry, meta)
            return self._error(404, None, "not found", head), 0

        def _api(self, parts: list[str], head: bool) -> int:
            if parts == ["whoami-v2"]:
                user, _ = self._user()
                if user is None:
                    return self._error(401, None, "Invalid credentials in Authorization header", head)
                return self._json({"type": "user", "name": user, "orgs": [
                    {"name": org, "roleInOrg": "write"} for org in sorted(hub.orgs.get(user, ()))],
                    "auth": {"type": "access_token", "accessToken": {
                        "displayName": "fakehub", "role": hub.roles.get(self._token() or "", "read")}}}, head)
            if parts == ["repos", "create"]:
                return self._create_repo(head)
            if parts == ["validate-yaml"]:
                self._body()
                return self._json({"errors": [], "warnings": []}, head)
            if len(parts) >= 3 and parts[0] == "models":
                repo = hub.repos.get(f"{parts[1]}/{parts[2]}")
                user, _ = self._user()
                if repo is None or not hub.can_read(user, repo):
                    return self._error(404, "RepoNotFound", "Repository not found", head)
                rest = parts[3:]
                if rest[:1] in (["preupload"], ["commit"]):
                    if not hub.can_write(self._token(), repo.namespace):
                        self._body()
                        return self._error(403, None, f"You don't have the rights to write to {repo.repo_id}", head)
                    return self._preupload(repo, head) if rest[0] == "preupload" else self._commit(repo, head)
                if rest[:1] == ["auth-check"]:
                    return self._gate(repo, head) or self._json({}, head)
                if rest[:1] == ["paths-info"]:
                    length = int(self.headers.get("Content-Length", 0))
                    raw = self.rfile.read(length).decode()
                    if "json" in self.headers.get("Content-Type", ""):
                        paths = json.loads(raw).get("paths", [])
                    else:
                        paths = urllib.parse.parse_qs(raw).get("paths", [])
                    return self._json([repo.files[p].tree_entry() for p in paths if p in repo.files], head)
                return self._json({"id": repo.repo_id, "sha": repo.commit, "gated": "manual" if repo.gated else False,
                                   "siblings": [{"rfilename": p} for p in repo.files]}, head)
            return self._error(404, None, "unknown api route", head)

        # -- publishing
        def _create_repo(self, head: bool) -> int:
            payload = json.loads(self._body() or b"{}")
            token = self._token()
            user = hub.tokens.get(token or "")
            if token is None or user is None:
                return self._error(401, None, "Invalid username or password.", head)
            namespace = payload.get("organization") or user
            repo_id = f"{namespace}/{payload.get('name')}"
            if not hub.can_write(token, namespace):
                return self._error(403, None, f"You don't have the rights to create a model under the namespace "
                                   f'"{namespace}"', head)
            if repo_id in hub.repos:
                return self._error(409, None, "You already created this model repo", head)
            hub.repos[repo_id] = FakeRepo(repo_id, private=payload.get("visibility") == "private"
                                          or bool(payload.get("private")))
            return self._json({"url": f"{hub.endpoint}/{repo_id}", "name": repo_id, "id": repo_id}, head)

        def _preupload(self, repo: FakeRepo, head: bool) -> int:
            files = json.loads(self._body() or b"{}").get("files", [])
            answer = []
            for entry in files:
                lfs = entry["size"] >= hub.lfs_threshold or entry["path"].endswith((".safetensors", ".png"))
                old = repo.files.get(entry["path"])
                oid = None if old is None else (old.sha256 if old.lfs else git_blob_sha1(old.data))
                answer.append({"path": entry["path"], "uploadMode": "lfs" if lfs else "regular",
                               "shouldIgnore": False, "oid": oid})
            return self._json({"files": answer, "commitOid": repo.commit}, head)

        def _commit(self, repo: FakeRepo, head: bool) -> int:
            import base64

            lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
            if hub.cut_after_commits is not None:
                if hub.cut_after_commits <= 0:
                    hub.down = True
                    self.close_connection = True
                    return 0
                hub.cut_after_commits -= 1
            summary = ""
            for item in lines:
                value = item["value"]
                if item["key"] == "header":
                    summary = value.get("summary", "")
                elif item["key"] == "file":
                    data = base64.b64decode(value["content"])
                    repo.files[value["path"]] = FakeFile(value["path"], data, False)
                elif item["key"] == "lfsFile":
                    data = hub.uploads.get(value["oid"]) or (hub.blob(value["oid"]) or FakeFile("", b"", True)).data
                    if hashlib.sha256(data).hexdigest() != value["oid"]:
                        return self._error(422, None, f"LFS object {value['oid']} was never uploaded", head)
                    repo.files[value["path"]] = FakeFile(value["path"], data, True)
                else:
                    return self._error(400, None, f"unsupported commit operation {item['key']}", head)
            repo.commits.append(summary)
            return self._json({"commitUrl": f"{hub.endpoint}/{repo.repo_id}/commit/{repo.commit}",
                               "commitOid": repo.commit, "pullRequestUrl": None}, head)

        def _lfs(self, parts: list[str], head: bool) -> int:
            if parts[0] == "lfs-upload":
                data = self._body()
                if hashlib.sha256(data).hexdigest() != parts[1]:
                    return self._error(400, None, "sha256 mismatch", head)
                hub.uploads[parts[1]] = data
                return self._send(200, {}, b"", head)
            if parts[0] == "lfs-verify":
                oid = json.loads(self._body() or b"{}").get("oid")
                return self._json({}, head) if oid in hub.uploads else self._error(404, None, "object not found", head)
            repo_id = f"{parts[0]}/{parts[1].removesuffix('.git')}"
            payload = json.loads(self._body() or b"{}")
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._error(404, "RepoNotFound", "Repository not found", head)
            if not hub.can_write(self._token(), repo.namespace):
                return self._error(403, None, f"You don't have the rights to write to {repo_id}", head)
            objects = []
            for obj in payload.get("objects", []):
                entry = {"oid": obj["oid"], "size": obj["size"]}
                if obj["oid"] not in hub.uploads and hub.blob(obj["oid"]) is None:
                    entry["actions"] = {"upload": {"href": f"{hub.endpoint}/lfs-upload/{obj['oid']}"},
                                        "verify": {"href": f"{hub.endpoint}/lfs-verify"}}
                objects.append(entry)
            return self._json({"transfer": "basic", "objects": objects}, head)

    return Handler


MiB = 1 << 20


def populate(hub: FakeHub, *, flux_size: int = 3 * MiB, seed: int = 1) -> dict[str, bytes]:
    """The two presets' repositories and the tokenizer repos, with small deterministic stand-in bytes."""
    import random

    rng = random.Random(seed)

    def blob(n: int) -> bytes:
        return rng.randbytes(n)

    files = {
        ("Kijai/flux-fp8", "flux1-dev-fp8.safetensors"): blob(flux_size),
        ("camenduru/FLUX.1-dev", "ae.safetensors"): blob(300_000),
        ("camenduru/FLUX.1-dev", "clip_l.safetensors"): blob(200_000),
        ("camenduru/FLUX.1-dev", "t5xxl_fp8_e4m3fn.safetensors"): blob(500_000),
        ("black-forest-labs/FLUX.1-dev", "flux1-dev.safetensors"): blob(400_000),
        ("black-forest-labs/FLUX.1-dev", "ae.safetensors"): blob(300_001),
        ("comfyanonymous/flux_text_encoders", "clip_l.safetensors"): blob(200_001),
        ("comfyanonymous/flux_text_encoders", "t5xxl_fp16.safetensors"): blob(600_000),
        ("openai/clip-vit-large-patch14", "vocab.json"): b'{"a": 0, "b": 1}',
        ("openai/clip-vit-large-patch14", "merges.txt"): b"#version: 0.2\na b\n",
        ("openai/clip-vit-large-patch14", "tokenizer_config.json"): b'{"model_max_length": 77}',
        ("openai/clip-vit-large-patch14", "special_tokens_map.json"): b'{"bos_token": "<|startoftext|>"}',
        ("openai/clip-vit-large-patch14", "tokenizer.json"): blob(5000),
        ("google/t5-v1_1-xxl", "spiece.model"): blob(4000),
        ("google/t5-v1_1-xxl", "tokenizer_config.json"): b"{}",
        ("google/t5-v1_1-xxl", "special_tokens_map.json"): b'{"eos_token": "</s>"}',
    }
    for (repo, name), data in files.items():
        hub.add_file(repo, name, data, gated=repo == "black-forest-labs/FLUX.1-dev")
    hub.add_token("hf_approvedtoken000000000000", "alice", gated_repos=("black-forest-labs/FLUX.1-dev",))
    hub.add_token("hf_notapprovedtoken00000000000", "bob")
    return {name: data for (repo, name), data in files.items() if not repo.startswith(("black", "comfy"))}


def use_hub(monkeypatch: object, hub: FakeHub, home: object) -> None:
    """Point huggingface_hub (and our code) at `hub`: endpoint, online, token storage inside the test's HOME."""
    import os

    import huggingface_hub.constants as constants

    mp = monkeypatch  # pytest.MonkeyPatch
    mp.setenv("HF_ENDPOINT", hub.endpoint)  # type: ignore[attr-defined]
    mp.delenv("HF_HUB_OFFLINE", raising=False)  # type: ignore[attr-defined]
    mp.setenv("HF_HUB_DISABLE_TELEMETRY", "1")  # type: ignore[attr-defined]
    mp.setattr(constants, "HF_HUB_OFFLINE", False)  # type: ignore[attr-defined]
    token_dir = os.path.join(str(home), ".cache", "huggingface")
    mp.setattr(constants, "HF_TOKEN_PATH", os.path.join(token_dir, "token"))  # type: ignore[attr-defined]
    mp.setattr(constants, "HF_STORED_TOKENS_PATH", os.path.join(token_dir, "stored_tokens"))  # type: ignore[attr-defined]
