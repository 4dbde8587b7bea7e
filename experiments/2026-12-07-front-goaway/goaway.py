"""Usage: KA=3 .venv/bin/python experiments/2026-12-07-front-goaway/goaway.py THREADS CALLS (KA: nginx keepalive_requests, patched into the rendered config). Plain tritonclient, no retries, N threads x M calls on one channel, through predilect's TritonServer(front)."""
import sys, threading, time, collections, io
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from pathlib import Path
import numpy as np
import tritonclient.grpc as grpcclient
from serving_fixtures import make_fundus_jpeg
from predilect.serving.server import TritonServer
from predilect import contract
import os
if os.environ.get("KA"): exec(open(Path(__file__).with_name("patch_keepalive.py")).read())

threads, per = int(sys.argv[1]), int(sys.argv[2])
jpeg = make_fundus_jpeg(1, size=(256, 192))
srv = TritonServer.on_free_ports(model_repository=Path(sys.argv[3]), http=False, max_request_bytes=32 << 20,
                                 log_path=Path("/tmp/goaway/t.log"))
with srv:
    client = grpcclient.InferenceServerClient(srv.grpc_url)
    errors = collections.Counter(); ok = [0]; lock = threading.Lock()
    def run():
        for _ in range(per):
            arr = np.frombuffer(jpeg, np.uint8)[None]; inp = grpcclient.InferInput(contract.IMAGE, list(arr.shape), "UINT8")
            inp.set_data_from_numpy(arr)
            try:
                client.infer(contract.ENSEMBLE, [inp])
                with lock: ok[0] += 1
            except Exception as e:
                with lock: errors[str(e)[:150]] += 1
    t0 = time.time()
    ts = [threading.Thread(target=run) for _ in range(threads)]
    [t.start() for t in ts]; [t.join() for t in ts]
    print("ok", ok[0], "errors", dict(errors), "in %.1fs" % (time.time() - t0))
