"""Run the real ``tritonserver`` that ships inside the nvidia-pytriton wheel.

The wheel carries the server binary, its libraries, the Python backend and one backend stub
per Python version; ``prepare_runtime`` lays out a backend directory with the stub of the
running interpreter (cached, built once per pytriton and Python version), and
``TritonServer`` runs the binary on a model repository with this virtualenv first on
``PATH``, so the Python-backend stubs import ``predilect`` and its dependencies from here.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from predilect.contract import (
    AUTH_KEY,
    CONFIG_FILENAME,
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    ENSEMBLE,
)
from predilect.errors import ConfigError

_PR_SET_PDEATHSIG = 1
# Log lines after which tritonserver never becomes ready nor exits (a stub that cannot even
# preinitialize, e.g. no model.py, leaves the model loading forever): fail fast on them.
_FATAL_MARKERS = (
    "Failed to preinitialize Python stub",
    # A Python-backend stub that dies while it starts (e.g. a C++ exception in its argument parsing)
    # leaves its model loading forever too.
    "terminate called after throwing an instance of",
)
# Error lines that every CPU-only start logs; they say nothing about the failure at hand.
_CPU_NOISE = ("CudaDriverHelper", "CUDA driver version is insufficient")
_GRPC_STARTED = "Started GRPCInferenceService at "
_ERROR_LINE = re.compile(r"^E\d{4} |^error: |Failed to (?:pre)?initialize|^terminate called after|^\s*what\(\): ")
_ANY_ADDRESS = ("0.0.0.0", "::", "")
LOOPBACK = "127.0.0.1"
_SHM_BYTES = 16 * 1024 * 1024  # Python-backend shared memory per stub: one full PIXELS batch fits
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "predilect_"
"""Every Python-backend shared-memory region of a server started here is named ``predilect_<pid>_<id>_...``."""
_STALE_SHM_AGE_S = 60.0  # a region younger than this may belong to a server still starting
# Triton's names of its API groups (``--grpc-restricted-protocol`` / ``--http-restricted-api``).
GRPC_PROTOCOLS = (
    "health",
    "metadata",
    "inference",
    "shared-memory",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
)
HTTP_APIS_BUT_HEALTH = tuple(p for p in GRPC_PROTOCOLS if p != "health")
"""HTTP health (server and model readiness) stays open: the readiness probe and load balancers use it."""
CLOSED_PROTOCOLS = ("shared-memory", "model-repository", "trace", "logging")
"""The API groups the product does not use: behind the front they are closed with a key nobody holds
(the front refuses them by RPC path before that)."""
# Behind the front: glibc returns large freed blocks (decoded frames) to the system at once instead
# of keeping them in its heaps, so a burst of large images does not leave the stubs' memory high.
_STUB_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1024 * 1024), "MALLOC_TRIM_THRESHOLD_": str(4 * 1024 * 1024)}


class ServerStartError(RuntimeError):
    """``tritonserver`` exited or did not become ready; the message ends with its log tail."""


@dataclass(frozen=True)
class ServerTls:
    """TLS on the gRPC endpoint: PEM files; ``mutual`` also requires a client certificate signed by ``root_cert_path``.

    Triton's HTTP endpoint has no TLS: a server with TLS answers HTTP health only (see ``ServerSecurity``).
    """

    cert_path: Path
    key_path: Path
    root_cert_path: Path | None = None
    mutual: bool = False

    def __post_init__(self) -> None:
        if self.mutual and self.root_cert_path is None:
            raise ConfigError("mutual TLS needs the CA that signs the client certificates (root_cert_path)")
        for path in (self.cert_path, self.key_path, self.root_cert_path):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"TLS file {path} does not exist")

    def args(self) -> list[str]:
        args = [
            "--grpc-use-ssl=true",
            f"--grpc-server-cert={Path(self.cert_path).resolve()}",
            f"--grpc-server-key={Path(self.key_path).resolve()}",
        ]
        if self.root_cert_path is not None:
            args.append(f"--grpc-root-cert={Path(self.root_cert_path).resolve()}")
        if self.mutual:
            args.append("--grpc-use-ssl-mutual=true")
        return args


@dataclass(frozen=True)
class ServerSecurity:
    """Who may call what.

    ``auth_token``: every gRPC call (all protocols) and every HTTP call but health must carry it
    under ``contract.AUTH_KEY`` (gRPC: ``contract.GRPC_AUTH_HEADER``); ``tls``: TLS / mTLS on
    gRPC; ``http_api`` False: HTTP answers health (server and model readiness) only -- the other
    HTTP APIs are restricted with a random key nobody holds. With TLS, HTTP is health-only
    always: Triton's HTTP has no TLS, so a token sent there would cross the network in clear.
    """

    auth_token: str | None = None
    tls: ServerTls | None = None
    http_api: bool = True

    def __post_init__(self) -> None:
        token = self.auth_token
        if token is None:
            return
        if not token or not token.isascii() or not token.isprintable() or token != token.strip():
            raise ConfigError("the auth token must be non-empty printable ASCII without surrounding spaces")
        if any(c in token for c in ",:="):
            raise ConfigError("the auth token must not contain ',', ':' or '=' (Triton's flag syntax)")

    @property
    def http_health_only(self) -> bool:
        return not self.http_api or self.tls is not None

    def fronted_args(self) -> list[str]:
        """The ``tritonserver`` flags behind the front, which checks the token and ends TLS: the API
        groups the product does not use closed with a random key nobody holds."""
        closed = ",".join(CLOSED_PROTOCOLS)
        return [
            f"--grpc-restricted-protocol={closed}:{AUTH_KEY}={secrets.token_hex(32)}",
            f"--http-restricted-api={closed}:{AUTH_KEY}={secrets.token_hex(32)}",
        ]

    def args(self, *, tls: bool = True) -> list[str]:
        """The ``tritonserver`` flags without a front (the token, if any, is on its command line)."""
        args = self.tls.args() if self.tls is not None and tls else []
        if self.auth_token is not None:
            args.append(f"--grpc-restricted-protocol={','.join(GRPC_PROTOCOLS)}:{AUTH_KEY}={self.auth_token}")
        http_key = secrets.token_hex(32) if self.http_health_only else self.auth_token
        if http_key is not None:
            args.append(f"--http-restricted-api={','.join(HTTP_APIS_BUT_HEALTH)}:{AUTH_KEY}={http_key}")
        return args


def _mapped_paths(proc: Path = Path("/proc")) -> set[str]:
    """Every file some process (that this user may inspect) has mapped into memory."""
    mapped: set[str] = set()
    for maps in proc.glob("[0-9]*/maps"):
        try:
            text = maps.read_text(errors="replace")
        except OSError:  # the process ended, or is not ours to read
            continue
        for line in text.splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) == 6:  # address, perms, offset, device, inode, path
                mapped.add(fields[5])
    return mapped


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _launcher_pid(name: str) -> int | None:
    """The pid of the process that started the server of a region named ``predilect_<pid>_<id>_...``."""
    field = name[len(SHM_PREFIX) :].split("_", 1)[0]
    return int(field) if field.isdigit() else None


def clean_stale_shm_regions(
    *,
    shm_dir: Path = SHM_DIR,
    prefix: str = SHM_PREFIX,
    min_age_s: float = _STALE_SHM_AGE_S,
    in_use: Iterable[str] | None = None,
    keep_live_launchers: bool = True,
) -> list[Path]:
    """Delete the shared-memory regions left by servers that died without cleaning up (SIGKILL, OOM).

    A region named ``prefix*`` is stale when no process maps it, it is older than ``min_age_s`` (a
    younger one may belong to a server still starting) and -- with ``keep_live_launchers`` -- the
    process that started its server (the pid in its name) has ended: a live launcher's server may
    still run and reopen its regions by name (when one grows), so they are left to its ``stop()``.
    Regions of other programs are never touched. ``in_use``: the mapped paths (default: read from
    ``/proc``). Returns the paths removed.
    """
    mapped = set(in_use) if in_use is not None else _mapped_paths()
    removed = []
    now = time.time()
    for path in shm_dir.glob(f"{prefix}*"):
        launcher = _launcher_pid(path.name)
        if keep_live_launchers and (launcher is None or _pid_alive(launcher)):
            continue
        try:
            stale = str(path) not in mapped and now - path.stat().st_mtime >= min_age_s
            if stale:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:
            continue
    return removed


_HANDED_OUT: set[int] = set()
_HANDED_OUT_LOCK = threading.Lock()


def free_port() -> int:
    """A TCP port that is free now and was not handed out before by this process.

    For tests and benchmarks; another process may still take it before use. Remembering the
    ports already given keeps one server's gRPC, HTTP and metrics ports distinct: the kernel
    may hand the same ephemeral port to two ``bind(0)`` calls in a row once the first closes.
    """
    with _HANDED_OUT_LOCK:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("", 0))
                port = int(s.getsockname()[1])
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port


def _pytriton_dir() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerStartError("nvidia-pytriton is not installed; install predilect[serve] to run tritonserver")
    return Path(next(iter(spec.submodule_search_locations)))


def server_binary() -> Path:
    """The ``tritonserver`` executable of the installed nvidia-pytriton."""
    return _pytriton_dir() / "tritonserver" / "bin" / "tritonserver"


def server_libs_dir() -> Path:
    """The shared libraries that ``tritonserver`` links against (auditwheel's ``.libs``)."""
    return _pytriton_dir().parent / "nvidia_pytriton.libs"


def prepare_runtime(cache_dir: Path | None = None) -> Path:
    """A backend directory holding the Python backend and the stub for this interpreter.

    Built once under ``cache_dir`` (default: the temp dir) per pytriton and Python version,
    then reused; concurrent callers race harmlessly, the loser discards its copy.
    """
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    dist = _pytriton_dir() / "tritonserver"
    stub = dist / "python_backend_stubs" / python / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerStartError(f"nvidia-pytriton ships no Python-backend stub for Python {python} ({stub})")
    version = importlib.metadata.version("nvidia-pytriton")
    base = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir())
    runtime = base / f"predilect-tritonserver-{version}-py{python}-{os.getuid()}"
    if (runtime / ".complete").is_file():
        return runtime / "backends"
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{runtime.name}-", dir=base))
    try:
        shutil.copytree(dist / "backends", staging / "backends")
        shutil.copy2(stub, staging / "backends" / "python" / "triton_python_backend_stub")
        (staging / ".complete").touch()
        try:
            staging.rename(runtime)
        except OSError:
            if not (runtime / ".complete").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return runtime / "backends"


def _die_with_parent_hook() -> Callable[[], None]:
    """A pre-exec hook asking the kernel to SIGTERM the child when this thread dies.

    The libc symbol is resolved here, before the fork: the hook itself must not load
    libraries in a child forked from a multi-threaded parent.
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return hook


class TritonServer:
    """A ``tritonserver`` process on a model repository; a context manager.

    ``start()`` returns once the server and (if the repository holds it) the
    ``fundus_screen`` ensemble are ready, or raises ``ServerStartError`` with the log tail.
    The server runs in its own session, so Ctrl+C reaches only this process, which then
    stops it; when started from the main thread it also dies with this process.
    """

    def __init__(
        self,
        *,
        model_repository: Path,
        grpc_port: int = DEFAULT_GRPC_PORT,
        http_port: int = DEFAULT_HTTP_PORT,
        metrics_port: int = DEFAULT_METRICS_PORT,
        bind_address: str = LOOPBACK,
        metrics_bind_address: str | None = None,
        security: ServerSecurity | None = None,
        http: bool = True,
        metrics: bool = True,
        max_request_bytes: int | None = None,
        log_verbose: int = 0,
        log_path: Path | None = None,
        startup_timeout_s: float = 300.0,
        stop_timeout_s: float = 30.0,
        runtime_cache_dir: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.grpc_port, self.http_port, self.metrics_port = grpc_port, http_port, metrics_port
        self.bind_address = bind_address
        self.metrics_bind_address = metrics_bind_address if metrics_bind_address is not None else bind_address
        self.security = security if security is not None else ServerSecurity()
        # tritonserver 2.51 (this wheel) dies of SIGSEGV on any HTTP or metrics request with a body of
        # 4 MB or more (docs/RELIABILITY.md): ``predilect serve`` turns HTTP off unless asked.
        self.http, self.metrics = http, metrics
        # tritonserver 2.51 has no request-size limit on gRPC: with one, nginx fronts the gRPC port
        # (``front``) and tritonserver listens on a loopback port of its own behind it.
        self.max_request_bytes = max_request_bytes
        self._front: Any = None
        self._private_dir: Path | None = None  # owner-only: tritonserver's sockets behind the front
        self.log_verbose = log_verbose
        self.log_path = Path(log_path) if log_path is not None else None
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.runtime_cache_dir = runtime_cache_dir
        self.extra_args = tuple(extra_args)  # further tritonserver flags
        # A unique shared-memory prefix keeps two servers on one machine from sharing regions.
        self.shm_prefix = f"{SHM_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        self._process: subprocess.Popen | None = None
        self._log_file: IO[bytes] | None = None

    @classmethod
    def on_free_ports(cls, *, model_repository: Path, **options: Any) -> TritonServer:
        """A server whose gRPC, HTTP and metrics ports are free ports (``free_port``), for tests and
        benchmarks; ``options`` are the other keyword arguments of ``TritonServer``."""
        return cls(
            model_repository=model_repository,
            grpc_port=free_port(),
            http_port=free_port(),
            metrics_port=free_port(),
            **options,
        )

    @property
    def _host(self) -> str:
        return "localhost" if self.bind_address in _ANY_ADDRESS else self.bind_address

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC endpoint, as ``tritonclient.grpc`` takes it."""
        return f"{self._host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self._host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        host = "localhost" if self.metrics_bind_address in _ANY_ADDRESS else self.metrics_bind_address
        return f"http://{host}:{self.metrics_port}/metrics"

    @property
    def fronted(self) -> bool:
        """Whether nginx fronts tritonserver, which then listens on Unix sockets only its user reaches."""
        return bool(self.max_request_bytes)

    def _private(self) -> Path:
        if self._private_dir is None:
            self._private_dir = Path(tempfile.mkdtemp(prefix="predilect-triton-sockets-"))  # 0700
        return self._private_dir

    def _socket(self, name: str) -> Path:
        """tritonserver's Unix socket ``name`` (gRPC's gets ``:0`` appended: Triton adds the port)."""
        return self._private() / (f"{name}.sock:0" if name == "grpc" else f"{name}.sock")

    @property
    def inner_grpc_url(self) -> str:
        """tritonserver's own gRPC endpoint (behind the front: its Unix socket), for tests and benchmarks."""
        return f"unix:{self._socket('grpc')}" if self.fronted else self.grpc_url

    def _repository_arg(self) -> Path:
        """The repository path tritonserver gets: a path with whitespace breaks the Python-backend
        stubs' argument parsing, so such a path is given through a link without any."""
        if not any(c.isspace() for c in str(self.model_repository)):
            return self.model_repository
        link = self._private() / "model_repository"
        if not link.is_symlink():
            link.symlink_to(self.model_repository, target_is_directory=True)
        return link

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def front_pid(self) -> int | None:
        """The front's (nginx's) master process, while it runs; None without a front."""
        return self._front.pid if self._front is not None else None

    @property
    def is_running(self) -> bool:
        front_ok = self._front is None or self._front.is_running
        return self._process is not None and self._process.poll() is None and front_ok

    def command(self, backend_dir: Path) -> list[str]:
        """The ``tritonserver`` command line."""
        if self.fronted:
            grpc_private, http_private, metrics_private = (self._socket(n) for n in ("grpc", "http", "metrics"))
            endpoints = [
                f"--grpc-address=unix:{str(grpc_private).removesuffix(':0')}",
                "--grpc-port=0",
                f"--http-address=unix:{http_private}",
                "--http-port=0",
                f"--metrics-address=unix:{metrics_private}",
                "--metrics-port=0",
            ]
            security = self.security.fronted_args()
        else:
            endpoints = [
                f"--grpc-address={self.bind_address}",
                f"--grpc-port={self.grpc_port}",
                f"--http-address={self.bind_address}",
                f"--http-port={self.http_port}",
                f"--metrics-address={self.metrics_bind_address}",
                f"--metrics-port={self.metrics_port}",
            ]
            security = self.security.args()
        return [
            str(server_binary()),
            f"--model-repository={self._repository_arg()}",
            f"--backend-directory={backend_dir}",
            *endpoints,
            f"--allow-http={str(self.http).lower()}",
            f"--allow-metrics={str(self.metrics).lower()}",
            "--allow-gpu-metrics=false",
            "--disable-auto-complete-config",
            f"--log-verbose={self.log_verbose}",
            f"--exit-timeout-secs={max(1, int(self.stop_timeout_s))}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--backend-config=python,shm-default-byte-size={_SHM_BYTES}",
            f"--backend-config=python,shm-growth-byte-size={_SHM_BYTES}",
            *security,
            *self.extra_args,
        ]

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = str(server_libs_dir())
        env["LD_LIBRARY_PATH"] = f"{libs}:{env['LD_LIBRARY_PATH']}" if env.get("LD_LIBRARY_PATH") else libs
        # The stubs' embedded interpreter finds its environment through the python on PATH:
        # make it this interpreter's, so the stubs import the predilect installed here (the wheel,
        # or the checkout through the exact editable install) -- the same copy as this process.
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        for key, value in _STUB_MALLOC_ENV.items():
            env.setdefault(key, value)
        return env

    def start(self) -> TritonServer:
        """Start the server and wait until it is ready."""
        if self._process is not None:
            raise RuntimeError("this TritonServer was already started")
        if not self.model_repository.is_dir():
            raise ServerStartError(
                f"model repository {self.model_repository} does not exist; run `predilect assemble` first"
            )
        backend_dir = prepare_runtime(self.runtime_cache_dir)
        clean_stale_shm_regions()  # what earlier servers killed with SIGKILL left in /dev/shm
        if self.log_path is None:
            self.log_path = Path(tempfile.mkdtemp(prefix="predilect-triton-")) / "tritonserver.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - open while the server runs; stop() closes it
        in_main_thread = threading.current_thread() is threading.main_thread()
        self._process = subprocess.Popen(
            self.command(backend_dir),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=self._environment(),
            start_new_session=True,
            # Owner-only: its sockets, and the Python backend's shared-memory regions holding image bytes.
            umask=0o077,
            preexec_fn=_die_with_parent_hook() if in_main_thread and sys.platform == "linux" else None,
        )
        try:
            self._wait_ready()
            self.restrict_shm_regions()
            if self.fronted:
                self._start_front()
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def front_log_path(self) -> Path | None:
        """The front's (nginx's) error log, beside the server log."""
        return self.log_path.with_name(self.log_path.stem + "-front.log") if self.log_path else None

    def _start_front(self) -> None:
        from predilect.serving.front import FrontStartError, FrontTls, Listen, ServingFront, Upstream

        tls = self.security.tls
        front_tls = None
        if tls is not None:
            front_tls = FrontTls(tls.cert_path, tls.key_path, tls.root_cert_path if tls.mutual else None)
        self._front = ServingFront(
            listen=Listen(
                host=self.bind_address,
                grpc_port=self.grpc_port,
                http_port=self.http_port if self.http else None,
                metrics_port=self.metrics_port if self.metrics else None,
                metrics_host=self.metrics_bind_address,
            ),
            upstream=Upstream(
                grpc=self._socket("grpc"),
                http=self._socket("http") if self.http else None,
                metrics=self._socket("metrics") if self.metrics else None,
            ),
            max_request_bytes=int(self.max_request_bytes or 0),
            log_path=self.front_log_path or self._private() / "front.log",
            auth_token=self.security.auth_token,
            http_health_only=self.security.http_health_only,
            tls=front_tls,
        )
        try:
            self._front.start()
        except FrontStartError as e:
            raise ServerStartError(str(e)) from e

    def _ready(self, path: str) -> bool:
        try:
            host = "127.0.0.1" if self.bind_address in _ANY_ADDRESS else self.bind_address
            with urllib.request.urlopen(f"http://{host}:{self.http_port}{path}", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def _grpc_started(self) -> bool:
        """Without HTTP (or behind the front): tritonserver starts its gRPC service only once every model
        has loaded (a model that fails to load makes it exit), so the log line plus a listening socket
        mean ready."""
        if not any(_GRPC_STARTED in line for line in self._log_lines()):
            return False
        try:
            if self.fronted:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
                    unix.settimeout(2)
                    unix.connect(str(self._socket("grpc")))
                    return True
            host = LOOPBACK if self.bind_address in _ANY_ADDRESS else self.bind_address
            with socket.create_connection((host, self.grpc_port), timeout=2):
                return True
        except OSError:
            return False

    def _is_ready(self, checks: list[str]) -> bool:
        return all(self._ready(path) for path in checks) if self.http and not self.fronted else self._grpc_started()

    def _wait_ready(self) -> None:
        checks = ["/v2/health/ready"]
        if (self.model_repository / ENSEMBLE / CONFIG_FILENAME).is_file():
            checks.append(f"/v2/models/{ENSEMBLE}/ready")
        deadline = time.monotonic() + self.startup_timeout_s
        process = self._process
        if process is None:
            raise RuntimeError("start the server before waiting for it")
        while True:
            code = process.poll()
            if code is not None:
                raise ServerStartError(self._failure(f"tritonserver exited with code {code} before it was ready"))
            if self._is_ready(checks):
                return
            fatal = self._fatal_line()
            if fatal:
                raise ServerStartError(self._failure(f"tritonserver cannot load a model ({fatal.strip()})"))
            if time.monotonic() > deadline:
                raise ServerStartError(
                    self._failure(f"tritonserver was not ready after {self.startup_timeout_s:.0f} s")
                )
            time.sleep(0.25)

    def _log_lines(self) -> list[str]:
        if self.log_path is None or not self.log_path.is_file():
            return []
        return self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()

    def _fatal_line(self) -> str | None:
        """The first line saying a model can never load, with the line after it when that says why."""
        lines = self._log_lines()
        for i, line in enumerate(lines):
            if any(m in line for m in _FATAL_MARKERS):
                why = lines[i + 1].strip() if i + 1 < len(lines) and lines[i + 1].lstrip().startswith("what():") else ""
                return f"{line.strip()} {why}".strip()
        return None

    def log_errors(self) -> list[str]:
        """The error lines of the server log, without the noise of a CPU-only machine."""
        return [
            line for line in self._log_lines() if _ERROR_LINE.search(line) and not any(n in line for n in _CPU_NOISE)
        ]

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log."""
        return "\n".join(self._log_lines()[-lines:])

    def _failure(self, what: str) -> str:
        errors = "\n".join(self.log_errors()[-10:]) or "(none)"
        return (
            f"{what}; log: {self.log_path}\nerrors in the log:\n{errors}\nlast lines of the log:\n{self.log_tail(15)}"
        )

    def stop(self) -> int | None:
        """Stop the server gracefully (SIGTERM, then SIGKILL after the timeout); its exit code."""
        front, self._front = self._front, None
        if front is not None:
            front.stop()
        process, self._process = self._process, None
        code = None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(timeout=self.stop_timeout_s + 10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # its own session: takes the backend stubs too
                code = process.wait()
            self._remove_own_shm_regions()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None
        return code

    def restrict_shm_regions(self) -> list[Path]:
        """Make this server's shared-memory regions owner-only; the ones changed.

        The Python backend creates each stub's region mode 0644 whatever the umask (it sets the mode
        itself), and the regions hold the request bytes: ``start()`` restricts them before the front
        takes any call, and ``predilect serve`` again while it runs (a stub that restarts makes a new one).
        """
        changed = []
        for path in SHM_DIR.glob(f"{self.shm_prefix}*"):
            try:
                if path.stat().st_mode & 0o077:
                    path.chmod(0o600)
                    changed.append(path)
            except FileNotFoundError:
                continue
        return changed

    def _remove_own_shm_regions(self) -> None:
        """After a stop that skipped the server's own clean-up (SIGKILL), its regions are still there."""
        for path in SHM_DIR.glob(f"{self.shm_prefix}*"):
            path.unlink(missing_ok=True)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self, _exc_type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()
