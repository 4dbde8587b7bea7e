"""Imported by hang.py's wrapper before Locust: at exit (atexit, before the interpreter's teardown), print what
is still alive: greenlets not dead (with their stacks), gRPC channels, Triton clients and ScreeningClients that
still hold an open connection. Nothing here runs in the product."""

from __future__ import annotations

import atexit
import gc
import sys
import traceback


def _report() -> None:
    import greenlet

    from predilect.client import ScreeningClient

    live = [g for g in gc.get_objects() if isinstance(g, greenlet.greenlet) and g and not g.dead]
    print(f"EXITPROBE: {len(live)} live greenlets", file=sys.stderr)
    for g in live:
        frame = g.gr_frame
        if frame is not None:
            print(f"EXITPROBE greenlet {g!r}:\n" + "".join(traceback.format_stack(frame)), file=sys.stderr)
    open_clients = [o for o in gc.get_objects() if isinstance(o, ScreeningClient) and o._client is not None]
    tritons = [o for o in gc.get_objects() if type(o).__name__ == "InferenceServerClient"]
    channels = [o for o in gc.get_objects() if type(o).__module__ == "grpc._channel" and type(o).__name__ == "Channel"]
    still_open = 0
    for t in tritons:
        try:
            t._channel._channel.check_connectivity_state(False)
            still_open += 1
        except ValueError:  # "Channel closed!"
            pass
    hub = __import__("gevent").get_hub()
    print(f"EXITPROBE: hub threadpool size {hub.threadpool.size} maxsize {hub.threadpool.maxsize}", file=sys.stderr)
    print(
        f"EXITPROBE: {still_open} of the Triton clients' channels still open; "
        f"{len(open_clients)} ScreeningClients still connected, {len(tritons)} InferenceServerClients, "
        f"{len(channels)} grpc channels alive",
        file=sys.stderr,
        flush=True,
    )


atexit.register(_report)
