"""32 concurrent requests of a 150 KB PNG declaring 6300x6300 through the front; server + stubs RSS before, peak, 10 s after.

Usage (repository root): .venv/bin/python experiments/2026-12-07-decode-memory/decode_memory.py malloc|nomalloc
("nomalloc": without the stubs' MALLOC_* settings). The tiny test model is assembled into /tmp.
"""
import sys, io, time, threading
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from pathlib import Path
import numpy as np
from PIL import Image, ImageDraw
import tritonclient.grpc as grpcclient
from predilect.serving import server as srvmod
from predilect.serving.server import TritonServer
from predilect.benchmarks.reliability import process_tree_rss_bytes
from predilect import contract
from serving_fixtures import build_tiny_onnx
from predilect.serving.configs import ServingOptions
from predilect.serving.repository import assemble
WORK = Path('/tmp/decode-memory'); WORK.mkdir(exist_ok=True)
REPO = WORK / 'repo'
if not REPO.exists():
    assemble(build_tiny_onnx(WORK / 'model.onnx', attention=True), REPO, ServingOptions(max_batch_size=16, max_queue_delay_us=2000))
if sys.argv[1] == "nomalloc":
    srvmod._STUB_MALLOC_ENV = {}
im = Image.new("RGB", (6300, 6300)); ImageDraw.Draw(im).ellipse((300, 300, 6000, 6000), fill=(200, 90, 40))
b = io.BytesIO(); im.save(b, format="PNG"); png = b.getvalue(); print("png bytes", len(png))
srv = TritonServer.on_free_ports(model_repository=REPO, http=False, max_request_bytes=32 << 20, log_path=WORK / "m.log")
def call(c):
    arr = np.frombuffer(png, np.uint8)[None]
    inp = grpcclient.InferInput(contract.IMAGE, list(arr.shape), "UINT8"); inp.set_data_from_numpy(arr)
    try: c.infer(contract.ENSEMBLE, [inp], client_timeout=300); return "ok"
    except Exception as e: return str(e)[:80]
with srv:
    c = grpcclient.InferenceServerClient(srv.grpc_url)
    mb = lambda: process_tree_rss_bytes(srv.pid) / 2**20
    print("start %.0f MB" % mb())
    peak = [0]; stop = threading.Event()
    def sample():
        while not stop.wait(0.2): peak[0] = max(peak[0], mb())
    t = threading.Thread(target=sample); t.start()
    res = []
    ths = [threading.Thread(target=lambda: res.append(call(c))) for _ in range(32)]
    t0 = time.time(); [x.start() for x in ths]; [x.join() for x in ths]
    print("32 calls %.1fs" % (time.time() - t0), {r: res.count(r) for r in set(res)})
    time.sleep(10); stop.set(); t.join()
    print("peak %.0f MB, 10 s after %.0f MB" % (peak[0], mb()))
