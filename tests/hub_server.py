"""A local stand-in for the Hugging Face Hub, so push-to-Hub and load-from-Hub paths run in tests with no network.

It serves, on 127.0.0.1 and a free port, the endpoints that `huggingface_hub` 2.x (`HfApi.create_repo`,
`upload_folder`, `create_commit`, `list_repo_files`, `hf_hub_download`, `ModelCard.load`), transformers'
`push_to_hub`, and `datasets`' `push_to_hub` and `load_dataset` (through `HfFileSystem`, streamed or not) call,
and keeps every repo's commits in memory. `{type}` is `models` or `datasets`:

    GET  /api/whoami-v2
    POST /api/repos/create                           (model and dataset repos)
    POST /api/validate-yaml                          (README.md metadata check before an upload)
    GET  /api/{type}/{repo_id}[/revision/{rev}]      (model_info / dataset_info / repo_info: sha, siblings)
    GET  /api/{type}/{repo_id}/tree/{rev}[/{path}]   (list_repo_tree / list_repo_files; `recursive`)
    POST /api/{type}/{repo_id}/paths-info/{rev}
    POST /api/{type}/{repo_id}/preupload/{rev}       (upload mode of each file: see below)
    POST /api/{type}/{repo_id}/commit/{rev}          (NDJSON: header, file (base64), lfsFile, deleted{File,Folder})
    POST /[datasets/]{repo_id}.git/info/lfs/objects/batch  (LFS batch API, "basic" transfer)
    PUT  /lfs-upload/{sha256}                        (the upload href the batch answer hands out)
    HEAD|GET /{repo_id}/resolve/{rev}/{path}         (model downloads)
    HEAD|GET /datasets/{repo_id}/resolve/{rev}/{path}  (dataset downloads)

Upload modes: the preupload answer is how the Hub picks the transfer. "regular" makes the client put the file,
base64, inside the commit itself; it is the answer for every file but parquet. `datasets` writes each parquet shard
to a temporary file, pre-uploads it and deletes it before the commit, so shards must go "lfs": the client then
asks the LFS batch endpoint where to PUT them, and the commit names them by sha256. With hf_xet installed the
client would send LFS files to Xet storage instead, which no test server can receive; `point_clients_at` turns
Xet off (HF_HUB_DISABLE_XET). Like the real Hub, a new repo starts with a `.gitattributes`.

Only the `main` branch (or a commit id, for reads) is served. A request to anything else gets a 404 and is
recorded in `LocalHub.unhandled`, so a test can tell a gap in this server from a bug.

Use it through the `hub_server` fixture, which also points `huggingface_hub`, transformers and `datasets` at it.
"""

import base64
import hashlib
import itertools
import json
import re
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

USER = "mm-tester"
DEFAULT_BRANCH = "main"
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
MAX_BODY_BYTES = 256 * 1024 * 1024  # a test that sends more than this is a bug, not a model
REQUEST_TIMEOUT_S = 30  # a stalled client cannot hold a handler thread past this
# The repo types served, with the prefix their web URLs carry (`{endpoint}/{prefix}{repo_id}`).
REPO_TYPES = {"model": "", "dataset": "datasets/"}
# Files the preupload answer sends through LFS (see the module docstring); every other file goes "regular".
LFS_SUFFIXES = (".parquet",)


def git_blob_id(content: bytes) -> str:
    """The git object id of a file, which the Hub reports as a regular file's `oid` and `ETag`."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class _Repo:
    private: bool
    # (commit id, snapshot of every file), oldest first; snapshots share their bytes objects.
    commits: list = field(default_factory=list)

    @property
    def head(self):
        return self.commits[-1]


class HubError(Exception):
    """An error answered the way the Hub does: a status, an `X-Error-Code` that `huggingface_hub` maps to
    its exception classes (RepoNotFound, RevisionNotFound, EntryNotFound), and a JSON `error` message."""

    def __init__(self, status, message, code=None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class LocalHub:
    """An in-memory Hub on 127.0.0.1. `start()` serves it from a daemon thread; `stop()` shuts it down.

    Attributes:
        url: the endpoint to give `huggingface_hub` (`http://127.0.0.1:<port>`).
        requests: `(method, path)` of every request served, in order.
        unhandled: `(method, path)` of requests this server has no route for.
    """

    def __init__(self):
        self._repos = {}
        self._lock = threading.Lock()
        self._commit_counter = itertools.count()
        self._lfs_objects = {}  # sha256 hex -> bytes, PUT before the commit that names them
        self.requests = []
        self.unhandled = []
        self._server = None
        self._thread = None
        self.url = None

    # ------------------------------------------------------------------ lifecycle

    def start(self):
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.hub = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None

    # ------------------------------------------------------------------ what tests read

    def repo_ids(self, repo_type="model"):
        with self._lock:
            return sorted(repo_id for kind, repo_id in self._repos if kind == repo_type)

    def files(self, repo_id, revision=DEFAULT_BRANCH, repo_type="model"):
        """`{path: bytes}` of every file in the repo at `revision` (`.gitattributes` included)."""
        with self._lock:
            _, files = self._snapshot(repo_type, repo_id, revision)
            return dict(files)

    def commits(self, repo_id, repo_type="model"):
        """Commit ids of the repo, oldest first (the first is the repo's creation)."""
        with self._lock:
            return [oid for oid, _ in self._get_repo(repo_type, repo_id).commits]

    def rebuild(self, repo_id, dest_dir, revision=DEFAULT_BRANCH, repo_type="model"):
        """Writes the repo's files at `revision` into `dest_dir` (e.g. to `from_pretrained` it); returns the path."""
        dest_dir = Path(dest_dir)
        for path, content in self.files(repo_id, revision, repo_type).items():
            target = dest_dir / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        return dest_dir

    # ------------------------------------------------------------------ repo state (callers hold the lock)

    def _get_repo(self, repo_type, repo_id):
        if (repo_type, repo_id) not in self._repos:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return self._repos[repo_type, repo_id]

    def _snapshot(self, repo_type, repo_id, revision):
        repo = self._get_repo(repo_type, repo_id)
        if revision == DEFAULT_BRANCH:
            return repo.head
        for oid, files in repo.commits:
            if oid == revision:
                return oid, files
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _new_commit_id(self, repo_id):
        return hashlib.sha1(f"{repo_id}:{next(self._commit_counter)}".encode()).hexdigest()

    # ------------------------------------------------------------------ endpoints

    def whoami(self, request):
        return 200, {
            "type": "user",
            "name": USER,
            "fullname": "mm local test user",
            "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}},
        }

    def create_repo(self, request):
        payload = request.json()
        repo_type = payload.get("type", "model")
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"This test Hub serves {' and '.join(REPO_TYPES)} repos only, not {repo_type!r}.")
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        url = f"{self.url}/{REPO_TYPES[repo_type]}{repo_id}"
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                return 409, {"error": f"You already created this {repo_type} repo", "url": url}
            repo = _Repo(private=payload.get("visibility") == "private")
            repo.commits.append((self._new_commit_id(repo_id), {".gitattributes": GITATTRIBUTES}))
            self._repos[repo_type, repo_id] = repo
        return 200, {"url": url, "name": repo_id, "id": repo_id}

    def validate_yaml(self, request):
        # The Hub checks a README.md's metadata before accepting an upload; parsing it into ModelCardData
        # is the same check for what matters here (valid YAML, a parseable model-index).
        from huggingface_hub import DatasetCardData, ModelCardData

        payload = request.json()
        content = payload["content"]
        card_data = DatasetCardData if payload.get("repoType") == "dataset" else ModelCardData
        match = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, re.DOTALL)
        if match is None:
            return 200, {"errors": [], "warnings": [{"message": "Empty or missing yaml metadata in repo card"}]}
        try:
            metadata = yaml.safe_load(match.group(1)) or {}
            if not isinstance(metadata, dict):
                raise ValueError(f"metadata must be a mapping, got {type(metadata).__name__}")
            card_data(**metadata)
        except Exception as error:  # anything the parse rejects is the client's error
            return 400, {"errors": [{"message": str(error)}]}
        return 200, {"errors": [], "warnings": []}

    def repo_info(self, request, repo_type, repo_id, revision=DEFAULT_BRANCH):
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            oid, files = self._snapshot(repo_type, repo_id, revision)
            return 200, {
                "id": repo_id,
                "author": repo_id.split("/")[0],
                "sha": oid,
                "private": repo.private,
                "tags": [],
                "siblings": [{"rfilename": path} for path in sorted(files)],
            }

    def tree(self, request, repo_type, repo_id, revision, path=""):
        recursive = request.query.get("recursive", ["false"])[0].lower() in ("true", "1")
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        with self._lock:
            _, files = self._snapshot(repo_type, repo_id, revision)
        below = {p: content for p, content in files.items() if p.startswith(prefix)}
        if prefix and not below:
            raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound")
        entries, folders = [], set()
        for file_path in sorted(below):
            rest = file_path[len(prefix) :]
            if not recursive and "/" in rest:
                folders.add(prefix + rest.split("/")[0])
                continue
            if recursive:
                parts = rest.split("/")[:-1]
                folders.update(prefix + "/".join(parts[: i + 1]) for i in range(len(parts)))
            entries.append(_file_entry(file_path, files[file_path]))
        entries += [_folder_entry(folder) for folder in sorted(folders)]
        return 200, entries

    def paths_info(self, request, repo_type, repo_id, revision):
        paths = request.form().get("paths", [])
        with self._lock:
            _, files = self._snapshot(repo_type, repo_id, revision)
        entries = []
        for path in paths:
            path = path.strip("/")
            if path in files:
                entries.append(_file_entry(path, files[path]))
            elif any(p.startswith(path + "/") for p in files):
                entries.append(_folder_entry(path))
        return 200, entries

    def preupload(self, request, repo_type, repo_id, revision):
        _refuse_pull_requests(request)
        with self._lock:
            _, files = self._snapshot(repo_type, repo_id, revision)
        answer = []
        for item in request.json()["files"]:
            # `oid` lets the client skip files whose content the repo already has, as on the Hub.
            remote = files.get(item["path"])
            oid = git_blob_id(remote) if remote is not None else None
            mode = "lfs" if item["path"].endswith(LFS_SUFFIXES) else "regular"
            answer.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return 200, {"files": answer, "commitOid": None}

    def commit(self, request, repo_type, repo_id, revision):
        _refuse_pull_requests(request)
        if revision != DEFAULT_BRANCH:
            message = f"This test Hub commits to '{DEFAULT_BRANCH}' only, not {revision!r}."
            raise HubError(404, message, "RevisionNotFound")
        lines = [json.loads(line) for line in request.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "A commit payload starts with a 'header' line.")
        header = lines[0]["value"]
        if not header.get("summary"):
            raise HubError(400, "The commit has no summary (commit message).")
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            head_oid, head_files = repo.head
            parent = header.get("parentCommit")
            if parent is not None and not head_oid.startswith(parent):
                raise HubError(412, f"Parent commit {parent} is not the head of {revision} ({head_oid}).")
            files = dict(head_files)
            for line in lines[1:]:
                _apply_operation(files, line["key"], line["value"], self._lfs_objects)
            oid = self._new_commit_id(repo_id)
            repo.commits.append((oid, files))
        commit_url = f"{self.url}/{REPO_TYPES[repo_type]}{repo_id}/commit/{oid}"
        return 200, {"success": True, "commitOid": oid, "commitUrl": commit_url, "hookOutput": ""}

    def lfs_batch(self, request, repo_type, repo_id):
        payload = request.json()
        if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", ["basic"]):
            raise HubError(400, "This test Hub takes LFS uploads only, through the 'basic' transfer.")
        with self._lock:
            self._get_repo(repo_type, repo_id)
            stored = set(self._lfs_objects)
        objects = []
        for item in payload["objects"]:
            answer = {"oid": item["oid"], "size": item["size"]}
            if item["oid"] not in stored:  # no "actions": the client skips content the Hub already has
                answer["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{item['oid']}"}}
            objects.append(answer)
        return 200, {"transfer": "basic", "objects": objects}

    def lfs_upload(self, request, oid):
        if hashlib.sha256(request.body).hexdigest() != oid:
            raise HubError(400, f"The uploaded bytes do not hash to the sha256 {oid}.")
        with self._lock:
            self._lfs_objects[oid] = request.body
        return 200, {}

    def resolve(self, request, repo_type, repo_id, revision, path):
        with self._lock:
            oid, files = self._snapshot(repo_type, repo_id, revision)
        if path not in files:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        content = files[path]
        headers = {"X-Repo-Commit": oid, "ETag": f'"{git_blob_id(content)}"'}
        return 200, content, headers


def _file_entry(path, content):
    return {"type": "file", "path": path, "size": len(content), "oid": git_blob_id(content)}


def _folder_entry(path):
    return {"type": "directory", "path": path, "size": 0, "oid": hashlib.sha1(path.encode()).hexdigest()}


def _refuse_pull_requests(request):
    if request.query.get("create_pr", ["0"])[0] not in ("0", "false", "False"):
        raise HubError(400, "This test Hub does not open pull requests (create_pr).")


def _apply_operation(files, key, value, lfs_objects):
    path = value.get("path", "").strip("/")
    if key == "file":
        if value.get("encoding") != "base64":
            raise HubError(400, f"Unsupported encoding {value.get('encoding')!r} for {path}.")
        files[path] = base64.b64decode(value["content"])
    elif key == "deletedFile":
        if path not in files:
            raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        del files[path]
    elif key == "deletedFolder":
        doomed = [p for p in files if p.startswith(path + "/")]
        if not doomed:
            raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
        for p in doomed:
            del files[p]
    elif key == "lfsFile":
        if value.get("algo") != "sha256" or value.get("oid") not in lfs_objects:
            raise HubError(400, f"{path}: no LFS object {value.get('oid')!r} was uploaded before this commit.")
        files[path] = lfs_objects[value["oid"]]
    else:
        raise HubError(400, f"Unsupported commit operation {key!r}.")


# `/api/models/...` and `/api/datasets/...` share their routes; the dispatcher turns the plural into a repo type.
_API = r"^/api/(?P<repo_type>models|datasets)/(?P<repo_id>[^/]+/[^/]+)"
# Git-side URLs (downloads, LFS) name models `/{repo_id}` and datasets `/datasets/{repo_id}`.
_GIT = r"^/(?P<repo_type>datasets/)?(?P<repo_id>[^/]+/[^/]+)"
_RESOLVE = rf"{_GIT}/resolve/(?P<revision>[^/]+)/(?P<path>.+)$"
_ROUTES = [
    ("GET", re.compile(r"^/api/whoami-v2$"), "whoami"),
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("GET", re.compile(rf"{_API}$"), "repo_info"),
    ("GET", re.compile(rf"{_API}/revision/(?P<revision>[^/]+)$"), "repo_info"),
    ("GET", re.compile(rf"{_API}/tree/(?P<revision>[^/]+)(?:/(?P<path>.+))?$"), "tree"),
    ("POST", re.compile(rf"{_API}/paths-info/(?P<revision>[^/]+)$"), "paths_info"),
    ("POST", re.compile(rf"{_API}/preupload/(?P<revision>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"{_API}/commit/(?P<revision>[^/]+)$"), "commit"),
    ("POST", re.compile(rf"{_GIT}\.git/info/lfs/objects/batch$"), "lfs_batch"),
    ("PUT", re.compile(r"^/lfs-upload/(?P<oid>[0-9a-f]{64})$"), "lfs_upload"),
    ("GET", re.compile(_RESOLVE), "resolve"),
    ("HEAD", re.compile(_RESOLVE), "resolve"),
]
_REPO_TYPE_IN_URL = {None: "model", "models": "model", "datasets": "dataset", "datasets/": "dataset"}


class _Request:
    def __init__(self, query, body):
        self.query, self.body = query, body

    def json(self):
        return json.loads(self.body or b"{}")

    def form(self):
        return parse_qs(self.body.decode())


class _Handler(BaseHTTPRequestHandler):
    timeout = REQUEST_TIMEOUT_S

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def log_message(self, format, *args):  # the hub records requests itself; keep test output clean
        pass

    def _dispatch(self, method):
        hub = self.server.hub
        url = urlsplit(self.path)
        hub.requests.append((method, url.path))
        try:
            body = self._read_body()
            for route_method, pattern, name in _ROUTES:
                match = pattern.match(url.path) if route_method == method else None
                if match:
                    kwargs = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
                    if "repo_type" in match.groupdict():
                        kwargs["repo_type"] = _REPO_TYPE_IN_URL[match.group("repo_type")]
                    result = getattr(hub, name)(_Request(parse_qs(url.query), body), **kwargs)
                    break
            else:
                hub.unhandled.append((method, url.path))
                raise HubError(404, f"The local test Hub has no route for {method} {url.path}.")
        except HubError as error:
            self._send(error.status, {"error": error.message}, {"X-Error-Code": error.code} if error.code else {})
            return
        except Exception as error:  # a server bug: answer 500 with its text rather than hang the client
            self._send(500, {"error": f"{type(error).__name__}: {error}"}, {})
            print(f"local hub: {method} {url.path} failed: {error!r}", file=sys.stderr)
            return
        status, payload, *extra = result
        self._send(status, payload, extra[0] if extra else {}, head_only=method == "HEAD")

    def _read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                total += size
                if total > MAX_BODY_BYTES:
                    raise HubError(413, f"Request body over {MAX_BODY_BYTES} bytes.")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise HubError(413, f"Request body of {length} bytes is over {MAX_BODY_BYTES}.")
        return self.rfile.read(length) if length else b""

    def _send(self, status, payload, headers, head_only=False):
        if isinstance(payload, bytes):
            data, content_type = payload, "application/octet-stream"
        else:
            data, content_type = json.dumps(payload).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not head_only:
            self.wfile.write(data)


def point_clients_at(url, monkeypatch, cache_dir):
    """Makes `huggingface_hub`, transformers and `datasets` talk to `url`, for this test only (via `monkeypatch`).

    `huggingface_hub` reads HF_ENDPOINT once, at import, into `constants.ENDPOINT` and the download URL
    template, and its module-level `HfApi` (behind `huggingface_hub.upload_folder` & co.) and transformers'
    shared `hf_api()` keep the endpoint they were built with; so the environment variable alone is too late
    in a test process. It is still set, for subprocesses a test starts.
    """
    import huggingface_hub.hf_api as hf_api_module
    from huggingface_hub import HfFileSystem, constants

    for name, value in {
        "HF_ENDPOINT": url,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_CACHE": str(cache_dir),
        "HF_TOKEN": "hf_mm_local_test_token",  # never send a developer's real token, even to 127.0.0.1
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    # LFS uploads (parquet shards) through the basic transfer this server takes, not through Xet storage.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(hf_api_module.api, "endpoint", url)
    # fsspec reuses an `HfFileSystem` (and its listings) per endpoint; a later server may get a used port.
    HfFileSystem.clear_instance_cache()
    _point_datasets_at(url, monkeypatch, Path(cache_dir).parent / "hf_datasets_cache")
    try:
        import transformers.utils.hub as transformers_hub
    except ImportError:
        return
    # Rebuilt lazily with the patched endpoint; restored (not left pointing here) at teardown.
    monkeypatch.setattr(transformers_hub, "_hf_api", None)


def _point_datasets_at(url, monkeypatch, cache_dir):
    """`datasets` copies the endpoint, offline flag and cache folders into `datasets.config` at import, and
    passes `config.HF_ENDPOINT` to every `HfApi`/`HfFileSystem` it builds; patch those copies too."""
    try:
        from datasets import config
    except ImportError:
        return
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache_dir))
    monkeypatch.setattr(config, "HF_ENDPOINT", url)
    monkeypatch.setattr(config, "HUB_DATASETS_URL", url + "/datasets/{repo_id}/resolve/{revision}/{path}")
    monkeypatch.setattr(config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(config, "HF_DATASETS_OFFLINE", False)
    monkeypatch.setattr(config, "HF_DATASETS_CACHE", cache_dir)
    downloads = cache_dir / config.DOWNLOADED_DATASETS_DIR
    monkeypatch.setattr(config, "DOWNLOADED_DATASETS_PATH", downloads)
    monkeypatch.setattr(config, "EXTRACTED_DATASETS_PATH", downloads / config.EXTRACTED_DATASETS_DIR)


@pytest.fixture
def hub_server(monkeypatch, tmp_path):
    """A `LocalHub` serving for this test, with `huggingface_hub`, transformers and `datasets` pointed at it.

    Yields the hub: `.url`, `.files(repo_id) -> {path: bytes}`, `.rebuild(repo_id, dest_dir)`,
    `.commits(repo_id)`, `.requests`, `.unhandled`; pass `repo_type="dataset"` for a dataset repo.
    """
    hub = LocalHub().start()
    try:
        point_clients_at(hub.url, monkeypatch, tmp_path / "hf_hub_cache")
        yield hub
    finally:
        hub.stop()
