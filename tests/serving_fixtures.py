"""Shared fixtures of the serving and client tests: a tiny exported model, its assembled
repository and one real ``tritonserver`` per test session.

Loaded as a pytest plugin (``pytest_plugins`` in ``tests/conftest.py``), because the tests
run with ``--import-mode=importlib`` and cannot import helper modules by name.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from predilect import contract
from predilect.catalog import DEFAULT_CATALOG
from predilect.preprocess import PreprocessCfg

if TYPE_CHECKING:
    from predilect.serving.server import TritonServer

TINY_MODEL_NAME = "uopsl-tiny"


TINY_GRID = 14


def build_tiny_onnx(
    path: Path,
    *,
    seed: int = 0,
    metadata: bool = True,
    attention: bool = False,
    catalog=DEFAULT_CATALOG,
    cfg: PreprocessCfg | None = None,
) -> Path:
    """A tiny exported model honouring the contract: PIXELS [B,3,S,S] -> LOGITS [B,C] (and ATTENTION).

    Per-channel mean over the image, times a weight matrix, plus a bias; with the
    ``predilect.*`` metadata_props of ``catalog`` and ``cfg`` (default: the default PreprocessCfg). With
    ``attention``, also ATTENTION [B,C,14,14]: per disease a softmax over the 16x16-pooled
    brightness, sharpened by a per-disease factor -- so each map peaks on the brightest patch.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cfg, classes = cfg or PreprocessCfg(), len(catalog)
    rng = np.random.default_rng(seed)
    weight = rng.normal(0.0, 3.0, size=(3, classes)).astype(np.float32)
    bias = rng.normal(0.0, 0.5, size=(classes,)).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", [contract.PIXELS], ["channel_mean"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["channel_mean", "weight"], ["scores"]),
        helper.make_node("Add", ["scores", "bias"], [contract.LOGITS]),
    ]
    initializers = [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")]
    outputs = [helper.make_tensor_value_info(contract.LOGITS, TensorProto.FLOAT, ["batch", classes])]
    if attention:
        grid, cell = TINY_GRID, cfg.size // TINY_GRID
        sharpness = rng.uniform(1.0, 4.0, size=(classes, 1)).astype(np.float32)
        nodes += [
            helper.make_node("ReduceMean", [contract.PIXELS], ["grey"], axes=[1], keepdims=1),
            helper.make_node("AveragePool", ["grey"], ["pooled"], kernel_shape=[cell, cell], strides=[cell, cell]),
            helper.make_node("Reshape", ["pooled", "flat_shape"], ["flat"]),
            helper.make_node("Mul", ["flat", "sharpness"], ["sharpened"]),
            helper.make_node("Softmax", ["sharpened"], ["weights"], axis=-1),
            helper.make_node("Reshape", ["weights", "grid_shape"], [contract.ATTENTION]),
        ]
        initializers += [
            numpy_helper.from_array(np.array([0, 1, grid * grid], np.int64), "flat_shape"),
            numpy_helper.from_array(sharpness, "sharpness"),
            numpy_helper.from_array(np.array([0, classes, grid, grid], np.int64), "grid_shape"),
        ]
        outputs.append(
            helper.make_tensor_value_info(contract.ATTENTION, TensorProto.FLOAT, ["batch", classes, grid, grid])
        )
    graph = helper.make_graph(
        nodes,
        "tiny_classifier",
        [helper.make_tensor_value_info(contract.PIXELS, TensorProto.FLOAT, ["batch", 3, cfg.size, cfg.size])],
        outputs,
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="predilect-tests")
    model.ir_version = 8
    if metadata:
        digest = hashlib.sha256(weight.tobytes() + bias.tobytes()).hexdigest()[:8]
        helper.set_model_props(
            model,
            {
                contract.KEY_CATALOG: catalog.to_json(),
                contract.KEY_PREPROCESS: cfg.to_json(),
                contract.KEY_MODEL_NAME: TINY_MODEL_NAME,
                contract.KEY_MODEL_VERSION: f"1+{digest}",
            },
        )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_attention_onnx(folder: Path) -> Path:
    """A small FundusClassifier (64 px, predilection attention, 3 sites per disease) exported to ONNX: a
    model the TensorRT rewrite finds its attention head in (the tiny ONNX above has none)."""
    import torch

    from predilect.build.export import export_onnx
    from predilect.models.checkpoint import save_checkpoint
    from predilect.models.classifier import FundusClassifier, ModelCfg

    torch.manual_seed(0)
    model = FundusClassifier(
        ModelCfg(num_diseases=len(DEFAULT_CATALOG), image_size=64, widths=(8, 16, 32), sites_per_disease=3)
    ).eval()
    save_checkpoint(folder / "model.safetensors", model, preprocess=PreprocessCfg(size=64), catalog=DEFAULT_CATALOG)
    export_onnx(folder / "model.safetensors", folder / "model.onnx")
    return folder / "model.onnx"


def make_fundus_jpeg(seed: int, *, size: tuple[int, int] = (1024, 768), quality: int = 92) -> bytes:
    """A synthetic, gradable fundus-like photograph: an orange disc on black with a bright optic
    disc, dark-red vessels, reddish blobs and sensor noise -- sharp, well exposed and centred, so
    that the served gradability step passes it (``predilect.quality``)."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    width, height = size
    image = Image.new("RGB", size, (0, 0, 0))
    draw = ImageDraw.Draw(image)
    radius = int(min(width, height) * rng.uniform(0.44, 0.48))
    cx, cy = width // 2, height // 2
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=(205, 95, 40))
    disc_x = cx + int(radius * rng.choice([-0.55, 0.55]))
    for _ in range(int(rng.integers(30, 40))):  # vessels leaving the optic disc
        angle = rng.uniform(0, 2 * np.pi)
        length = radius * rng.uniform(0.4, 0.9)
        bend = rng.uniform(-0.6, 0.6)
        points = [
            (disc_x + t * length * np.cos(angle + bend * t), cy + t * length * np.sin(angle + bend * t))
            for t in np.linspace(0.0, 1.0, 12)
        ]
        draw.line(points, fill=(120, 30, 20), width=int(rng.integers(2, 7)))
    disc = int(radius * 0.12)
    draw.ellipse((disc_x - disc, cy - disc, disc_x + disc, cy + disc), fill=(240, 200, 120))
    for _ in range(int(rng.integers(6, 16))):
        r = int(rng.integers(8, 40))
        x = cx + int(rng.integers(-radius // 2, radius // 2))
        y = cy + int(rng.integers(-radius // 2, radius // 2))
        colour = (int(rng.integers(120, 250)), int(rng.integers(40, 140)), int(rng.integers(10, 60)))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=255)
    image = Image.composite(image, Image.new("RGB", size, (0, 0, 0)), mask)  # nothing drawn outside the disc
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32)
    inside = np.asarray(mask, dtype=np.float32)[:, :, None] / 255.0
    noisy = pixels + rng.normal(0.0, 7.0, pixels.shape).astype(np.float32) * inside
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def fundus_jpeg() -> Callable[[int], bytes]:
    """``fundus_jpeg(seed)``: synthetic fundus JPEG bytes, different per seed."""
    return make_fundus_jpeg


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its ATTENTION output: the session's repositories serve HEATMAPS."""
    return build_tiny_onnx(tmp_path_factory.mktemp("export") / "model.onnx", attention=True)


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory, tiny_onnx: Path) -> Path:
    from predilect.serving.configs import ServingOptions
    from predilect.serving.repository import assemble

    # The three-step layout: the client tests read the preprocess step's statistics; the fused
    # (default) layout has its own server in tests/test_hostile_images.py. Unbounded queues: these
    # are functional tests of a shared server under a loaded CI machine; refusal under overload
    # has its own server in tests/test_overload.py.
    options = ServingOptions(
        max_batch_size=16, max_queue_delay_us=20_000, layout="split", max_queue_size=0, queue_timeout_us=0
    )
    return assemble(tiny_onnx, tmp_path_factory.mktemp("serving") / "model_repository", options)


@pytest.fixture(scope="session")
def tritonserver() -> type[TritonServer]:
    """The real ``tritonserver`` launcher, ``TritonServer``: use it as a context manager.

    Every test or fixture that starts tritonserver, itself or through a command it runs, requests
    this fixture (``@pytest.mark.usefixtures("tritonserver")`` where it needs no launcher), which
    puts the test in the integration lane (tests/conftest.py).
    """
    from predilect.serving.server import TritonServer, server_binary

    if not server_binary().is_file():
        pytest.fail(f"no tritonserver at {server_binary()}: `make install` installs nvidia-pytriton")
    return TritonServer


@pytest.fixture(scope="session")
def triton_server(
    tritonserver: type[TritonServer], model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    """One real tritonserver on free ports for the whole session."""
    server = tritonserver.on_free_ports(
        model_repository=model_repository,
        log_path=tmp_path_factory.mktemp("triton-log") / "tritonserver.log",
        startup_timeout_s=180,
    )
    with server:
        yield server


@pytest.fixture(scope="session")
def fused_server(
    tritonserver: type[TritonServer], tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    """The default (fused) CPU layout on the real tritonserver, for the whole session."""
    from predilect.serving.configs import ServingOptions
    from predilect.serving.repository import assemble

    work = tmp_path_factory.mktemp("fused")
    repository = assemble(tiny_onnx, work / "repo", ServingOptions(max_batch_size=16, max_queue_delay_us=20_000))
    with tritonserver.on_free_ports(
        model_repository=repository,
        log_path=work / "tritonserver.log",
        startup_timeout_s=180,
    ) as server:
        yield server


@pytest.fixture(scope="session", params=["split", "fused"])
def layout_server(
    request: pytest.FixtureRequest, triton_server: TritonServer, fused_server: TritonServer
) -> TritonServer:
    """The session's server of each CPU layout in turn: tests that hold for both take this one."""
    return fused_server if request.param == "fused" else triton_server


# Type 1 attributes of Ophthalmic Photography that img2dcm cannot invent.
_OPHTHALMIC_TYPE1 = {
    "ImageLaterality": "R",
    "AcquisitionDeviceTypeCodeSequence[0].CodeValue": "409899009",
    "AcquisitionDeviceTypeCodeSequence[0].CodingSchemeDesignator": "SCT",
    "AcquisitionDeviceTypeCodeSequence[0].CodeMeaning": "Fundus camera",
}


@pytest.fixture(scope="module")
def client(triton_server: TritonServer):
    """A connected sync ``ScreeningClient`` on the session's server."""
    from predilect.client import ScreeningClient

    with ScreeningClient(triton_server.grpc_url, timeout_s=60) as c:
        yield c


def wrap_jpeg_as_dicom(
    jpeg: Path, out: Path, *, sop_class: str = "oph", keys: dict[str, str] | None = None, keep_appn: bool = False
) -> Path:
    """Wrap a JPEG file into DICOM with DCMTK's ``img2dcm`` (JPEG baseline, the JPEG bytes kept).

    ``sop_class``: "oph" (Ophthalmic Photography 8 Bit), "vlp" (VL Photographic) or "sc".
    ``keys``: extra attributes, e.g. {"PatientName": "Doe^Jane"}.
    """
    import subprocess

    command = ["img2dcm", f"-{sop_class}", *([] if not keep_appn else ["-ka"])]
    attributes = dict(_OPHTHALMIC_TYPE1 if sop_class == "oph" else {})
    attributes.update(keys or {})
    for keyword, value in attributes.items():
        command += ["-k", f"{keyword}={value}"]
    subprocess.run([*command, str(jpeg), str(out)], check=True, capture_output=True, timeout=60)
    return out


@pytest.fixture(scope="session")
def dicom_from_jpeg() -> Callable[..., Path]:
    """``dicom_from_jpeg(jpeg_path, out_path, sop_class=..., keys=..., keep_appn=...)``: see wrap_jpeg_as_dicom."""
    import shutil

    if shutil.which("img2dcm") is None:
        pytest.fail("DCMTK's img2dcm is missing: `make system-deps` installs it (apt-get install dcmtk)")
    return wrap_jpeg_as_dicom


def make_tls_files(folder: Path) -> dict[str, Path]:
    """A throw-away CA, a server certificate for localhost/127.0.0.1 and a client certificate (openssl)."""
    import subprocess

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    files = {name: folder / f"{name}.pem" for name in ("ca", "ca_key", "server", "server_key", "client", "client_key")}
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=predilect-test-ca",
        "-keyout",
        str(files["ca_key"]),
        "-out",
        str(files["ca"]),
    )
    for name, subject in (("server", "/CN=localhost"), ("client", "/CN=pacs-client")):
        request = folder / f"{name}.csr"
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            str(files[f"{name}_key"]),
            "-out",
            str(request),
        )
        extensions = folder / f"{name}.ext"
        extensions.write_text(
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n" if name == "server" else "extendedKeyUsage=clientAuth\n"
        )
        openssl(
            "x509",
            "-req",
            "-in",
            str(request),
            "-CA",
            str(files["ca"]),
            "-CAkey",
            str(files["ca_key"]),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(extensions),
            "-out",
            str(files[name]),
        )
    return files


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import shutil

    if shutil.which("openssl") is None:
        pytest.fail("openssl is missing: apt-get install openssl")
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def mutual_tls_server(
    tritonserver: type[TritonServer],
    model_repository: Path,
    tls_files: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TritonServer]:
    """A second real tritonserver whose gRPC endpoint requires mutual TLS (client certificate)."""
    server = tritonserver.on_free_ports(
        model_repository=model_repository,
        log_path=tmp_path_factory.mktemp("triton-tls-log") / "tritonserver.log",
        startup_timeout_s=180,
        extra_args=[
            "--grpc-use-ssl=true",
            "--grpc-use-ssl-mutual=true",
            f"--grpc-server-cert={tls_files['server']}",
            f"--grpc-server-key={tls_files['server_key']}",
            f"--grpc-root-cert={tls_files['ca']}",
        ],
    )
    with server:
        yield server
