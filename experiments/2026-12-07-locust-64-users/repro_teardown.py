"""The teardown deadlock in one process, without Locust or a server (pass ``fixed`` to leave with os._exit).

    timeout 20 .venv/bin/python experiments/2026-12-07-locust-64-users/repro_teardown.py [fixed]

gRPC's gevent integration keeps one of gevent's thread-pool workers waiting on a C++ mutex and condition
variable (``await_next_greenlet``) while any channel is open; its atexit hook wakes that worker, which then
holds the mutex while it waits for the GIL. Once the interpreter is finalising, a thread waiting for the GIL
never gets it, so the mutex stays held. A Triton client that only the final garbage collection frees (one in
a reference cycle, as the users' clients end up behind the exceptions their failures raised) closes its
channel again from ``__del__``; that close decrements gRPC's gevent channel count under the same mutex, and
the process hangs there. ``sys.setswitchinterval`` only makes the window certain: it keeps the main thread
from handing the GIL to the worker between the wake-up and finalisation, which otherwise happens by chance.
"""

from gevent import monkey

monkey.patch_all()

import atexit  # noqa: E402
import faulthandler  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import grpc.experimental.gevent as grpc_gevent  # noqa: E402

grpc_gevent.init_gevent()

import gevent  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402

faulthandler.register(signal.SIGUSR1, all_threads=True)
keep = grpcclient.InferenceServerClient("127.0.0.1:9")  # open: gRPC's gevent worker waits in the thread pool
gevent.sleep(0.2)  # let the hub start that worker
closed = grpcclient.InferenceServerClient("127.0.0.1:9")
closed.close()
closed.cycle = closed  # only the final collection frees it; its __del__ closes the channel a second time
del closed
atexit.register(sys.setswitchinterval, 1000.0)  # runs before gRPC's own atexit hook (last in, first out)
if sys.argv[1:] == ["fixed"]:
    atexit.register(os._exit, 0)  # the fix: leave before any other atexit hook and before finalisation
print("exiting", flush=True)
