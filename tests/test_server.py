"""The real tritonserver: readiness, start errors, clean SIGTERM; the backends' pure logic."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from predilect import contract
from predilect.catalog import DEFAULT_CATALOG
from predilect.preprocess import InvalidImageError, PreprocessCfg, Preprocessor
from predilect.serving import configs
from predilect.serving.backends.classifier import OnnxClassifier
from predilect.serving.backends.postprocess import stable_sigmoid
from predilect.serving.backends.preprocess import preprocess_and_grade
from predilect.serving.backends.screening import Screening
from predilect.serving.server import ServerStartError, TritonServer, free_port

ROOT = Path(__file__).resolve().parent.parent


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


def test_server_reports_every_model_ready_when_started(triton_server: TritonServer) -> None:
    assert triton_server.is_running
    assert _get(f"{triton_server.http_url}/v2/health/ready")[0] == 200
    for name in (contract.PREPROCESS_MODEL, contract.CLASSIFIER_MODEL, contract.POSTPROCESS_MODEL, contract.ENSEMBLE):
        assert _get(f"{triton_server.http_url}/v2/models/{name}/ready")[0] == 200, name
    status, metrics = _get(triton_server.metrics_url)
    assert status == 200 and "nv_inference_request_success" in metrics


def _broken_repository(root: Path, model_py: str | None) -> Path:
    model = root / "repo" / "broken"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\nmax_batch_size: 1\n')
    if model_py is not None:
        (model / "1" / "model.py").write_text(model_py)
    return root / "repo"


def _start_broken(tritonserver: type[TritonServer], repository: Path) -> ServerStartError:
    server = tritonserver.on_free_ports(
        model_repository=repository,
        startup_timeout_s=60,
    )
    started = time.monotonic()
    with pytest.raises(ServerStartError) as caught:
        server.start()
    assert time.monotonic() - started < 30, "a load failure must not wait for the startup timeout"
    assert not server.is_running
    return caught.value


def test_server_start_raises_server_start_error_when_a_model_fails_to_initialize(
    tritonserver: type[TritonServer], tmp_path: Path
) -> None:
    model_py = "class TritonPythonModel:\n    def initialize(self, args):\n        raise ValueError('weights gone')\n"
    error = _start_broken(tritonserver, _broken_repository(tmp_path, model_py))
    assert "exited with code" in str(error)
    assert "ValueError: weights gone" in str(error)  # the cause, from the log's error lines


def test_server_start_raises_server_start_error_when_model_py_is_missing(
    tritonserver: type[TritonServer], tmp_path: Path
) -> None:
    # tritonserver itself never gives up on such a model: the log is how we know.
    error = _start_broken(tritonserver, _broken_repository(tmp_path, None))
    assert "Python model file not found" in str(error)


def test_server_start_raises_server_start_error_when_repository_missing(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError, match="predilect assemble"):
        TritonServer(model_repository=tmp_path / "nowhere").start()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.usefixtures("tritonserver")  # `predilect serve` starts its own
def test_serve_cli_exits_zero_and_stops_tritonserver_when_sent_sigterm(model_repository: Path, tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient

    grpc_port = free_port()
    command = [
        sys.executable,
        "-m",
        "predilect.cli",
        "serve",
        "--model-repository",
        str(model_repository),
        "--grpc-port",
        str(grpc_port),
        "--metrics-port",
        str(free_port()),
        "--log-file",
        str(tmp_path / "triton.log"),
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = process.stdout.readline()  # the first line is printed once the server is ready
        assert "tritonserver ready" in banner, banner + process.stdout.read()
        server_pid = int(re.search(r"pid (\d+)", banner).group(1))
        with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as raw:
            assert raw.is_server_ready() and raw.is_model_ready(contract.ENSEMBLE)
        # HTTP is off by default: the 4 MB body that kills tritonserver 2.51's HTTP front end finds no listener.
        argv = Path(f"/proc/{server_pid}/cmdline").read_bytes().split(b"\0")
        assert b"--allow-http=false" in argv
        with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as raw:
            assert raw.is_server_live()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    deadline = time.monotonic() + 10
    while _pid_alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)  # a zombie until its parent reaped it; the parent has exited, init reaps it
    assert not _pid_alive(server_pid)
    with pytest.raises(grpcclient.InferenceServerException):
        grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}").is_server_live(client_timeout=2)


def test_stable_sigmoid_is_exact_and_finite_when_logits_are_extreme() -> None:
    logits = np.array([[-1e4, -80.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 80.0, 1e4]], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        probabilities = stable_sigmoid(logits)
    reference = np.exp(-np.logaddexp(0.0, -logits.astype(np.float64)))
    assert probabilities.dtype == np.float32 and probabilities.shape == logits.shape
    np.testing.assert_allclose(probabilities, reference, rtol=1e-6, atol=0)


def test_onnx_classifier_splits_logits_back_per_request_when_batched(tiny_onnx: Path) -> None:
    classifier = OnnxClassifier(tiny_onnx, intra_op_threads=1)
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(n, 3, 224, 224)).astype(np.float32) for n in (1, 3, 1)]
    together = classifier.run(batches)
    classes = len(DEFAULT_CATALOG)
    assert [t.shape for t in together] == [(1, classes), (3, classes), (1, classes)]
    for batch, logits in zip(batches, together, strict=True):
        np.testing.assert_allclose(logits, classifier.run([batch])[0], rtol=0, atol=1e-6)


def test_preprocess_and_grade_rejects_only_bad_payloads_when_batched(fundus_jpeg) -> None:
    cfg = PreprocessCfg()
    preprocessor = Preprocessor(cfg, max_batch_size=4, num_threads=1)
    screening = Screening.from_parameters(
        configs.screening_parameters(configs.ServedModel(DEFAULT_CATALOG, cfg, "tiny", "1"))
    )
    good = np.frombuffer(fundus_jpeg(1), np.uint8)
    images = [good[None], np.frombuffer(b"GIF89a not supported", np.uint8)[None], np.stack([good, good]), good[None]]
    results = preprocess_and_grade(preprocessor, screening, images)
    alone = preprocessor.run([good])
    for answer in (results[0], results[3]):
        assert not isinstance(answer, InvalidImageError)
        np.testing.assert_array_equal(answer[contract.PIXELS], alone.pixels_or_raise())
        np.testing.assert_array_equal(answer[contract.FIELD_BOX], np.asarray(alone.boxes, np.float32))
    assert isinstance(results[1], InvalidImageError) and "not a JPEG or PNG" in str(results[1])
    assert isinstance(results[2], InvalidImageError) and "one image per request" in str(results[2])


def _serve_args(*argv: str):
    from predilect.serving.serve_cli import _parser

    return _parser().parse_args(["--model-repository", "repo", *argv])


def test_serve_refuses_to_listen_beyond_loopback_when_no_token_is_set() -> None:
    from predilect.cli import CommandError
    from predilect.serving.serve_cli import security_from_args

    assert _serve_args().bind_address == "127.0.0.1" and _serve_args().metrics_bind_address == "127.0.0.1"
    with pytest.raises(CommandError, match=contract.AUTH_TOKEN_ENV):
        security_from_args(_serve_args("--bind-address", "0.0.0.0"), {})
    with pytest.raises(CommandError, match=contract.AUTH_TOKEN_ENV):
        security_from_args(_serve_args("--metrics-bind-address", "10.0.0.5"), {})
    security = security_from_args(_serve_args("--bind-address", "0.0.0.0"), {contract.AUTH_TOKEN_ENV: "t0k"})
    assert security.auth_token == "t0k" and security.http_health_only
    assert (
        security_from_args(_serve_args("--bind-address", "0.0.0.0", "--allow-unauthenticated"), {}).auth_token is None
    )


def test_serve_keeps_http_health_only_when_tls_is_on(tls_files: dict[str, Path]) -> None:
    from predilect.cli import CommandError
    from predilect.serving.serve_cli import security_from_args

    tls = ["--tls-cert", str(tls_files["server"]), "--tls-key", str(tls_files["server_key"])]
    mutual = [*tls, "--tls-root-cert", str(tls_files["ca"]), "--tls-mutual"]
    security = security_from_args(_serve_args(*mutual, "--http"), {contract.AUTH_TOKEN_ENV: "t0k"})
    args = security.args()
    assert "--grpc-use-ssl=true" in args and "--grpc-use-ssl-mutual=true" in args
    http = next(a for a in args if a.startswith("--http-restricted-api="))
    assert "t0k" not in http, "the token never goes to the cleartext HTTP endpoint"
    with pytest.raises(CommandError, match="together"):
        security_from_args(_serve_args("--tls-cert", str(tls_files["server"])), {})
    with pytest.raises(CommandError, match="need --tls-cert"):
        security_from_args(_serve_args("--tls-mutual"), {})


def test_serve_refuses_http_port_when_http_is_off() -> None:
    from predilect.cli import CommandError
    from predilect.serving.serve_cli import security_from_args

    with pytest.raises(CommandError, match="--http-port needs --http"):
        security_from_args(_serve_args("--http-port", "8000"), {})
    assert security_from_args(_serve_args("--http-port", "8000", "--http"), {}).http_api


def test_clean_stale_shm_regions_removes_only_old_unmapped_regions(tmp_path: Path) -> None:
    from predilect.serving.server import clean_stale_shm_regions

    old = time.time() - 3600
    dead = _dead_pid()
    names = (
        f"predilect_{dead}_aa_stale",
        f"predilect_{dead}_bb_mapped",
        f"predilect_{dead}_cc_young",
        f"predilect_{os.getpid()}_dd_live_launcher",
        "other_program_region",
    )
    for name in names:
        (tmp_path / name).write_bytes(b"\0" * 4096)
        if "young" not in name:
            os.utime(tmp_path / name, (old, old))
    removed = clean_stale_shm_regions(shm_dir=tmp_path, in_use={str(tmp_path / names[1])})
    assert removed == [tmp_path / names[0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_server_shm_regions_are_reclaimed_when_server_and_stubs_were_killed_with_sigkill(
    tritonserver: type[TritonServer], model_repository: Path, tmp_path: Path
) -> None:
    """SIGKILL of the server's process group (OOM killer, ``kill -9 -<pgid>``) leaves its Python-backend
    regions in /dev/shm with nobody to unlink them: ``clean_stale_shm_regions`` (run at every start) does."""
    from predilect.serving.server import SHM_DIR, clean_stale_shm_regions

    server = tritonserver.on_free_ports(
        model_repository=model_repository,
        log_path=tmp_path / "triton.log",
        startup_timeout_s=180,
    )
    with server:
        regions = sorted(SHM_DIR.glob(f"{server.shm_prefix}*"))
        assert regions, "the Python-backend stubs map their regions under the server's prefix"
        assert not clean_stale_shm_regions(prefix=server.shm_prefix, min_age_s=0, keep_live_launchers=False)
        os.killpg(server.pid, signal.SIGKILL)  # the server runs in its own session: this takes the stubs too
        deadline = time.monotonic() + 60
        while server.is_running and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(p.exists() for p in regions), "nobody is left to unlink them"
        removed: list[Path] = []
        while set(removed) != set(regions) and time.monotonic() < deadline:  # until the killed stubs are reaped
            removed += clean_stale_shm_regions(prefix=server.shm_prefix, min_age_s=0, keep_live_launchers=False)
            time.sleep(0.2)
        assert set(removed) == set(regions)
    assert not list(SHM_DIR.glob(f"{server.shm_prefix}*"))
