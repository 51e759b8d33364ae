"""A stop signal that lands inside tritonclient's HTTP machinery ends the command with its
one line: no traceback from gevent's event loop, none from a half-made client."""

from __future__ import annotations

import subprocess
import sys

IN_GEVENT_LOOP = """
import os, signal, socket, threading
import tritonclient.http as httpclient
import asen.client  # noqa: F401 - its gevent set-up is what is tested

silent = socket.socket()  # accepts, never answers: the request waits in gevent's loop
silent.bind(("127.0.0.1", 0))
silent.listen(1)
url = f"127.0.0.1:{silent.getsockname()[1]}"
client = httpclient.InferenceServerClient(url, connection_timeout=5, network_timeout=5)
threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
try:
    client.is_server_ready()
except KeyboardInterrupt:
    print("interrupted")
"""

IN_CLIENT_CONSTRUCTOR = """
import os, signal
import tritonclient.http as httpclient
from asen.client.server import short_http_client

make = httpclient.InferenceServerClient.__init__

def interrupted(self, *args, **kwargs):  # the stop lands while the client is being made
    os.kill(os.getpid(), signal.SIGINT)
    make(self, *args, **kwargs)

httpclient.InferenceServerClient.__init__ = interrupted
try:
    with short_http_client("127.0.0.1:9"):
        pass
except KeyboardInterrupt:
    print("interrupted")
"""


def _run(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )


def test_a_stop_inside_gevents_loop_is_passed_on_unprinted():
    """gevent printed it (`KeyboardInterrupt` and a timestamp) before passing it on."""
    done = _run(IN_GEVENT_LOOP)
    assert done.stdout.strip() == "interrupted", done.stderr
    assert not done.stderr.strip(), done.stderr


def test_a_stop_while_a_client_is_made_leaves_no_half_made_client():
    done = _run(IN_CLIENT_CONSTRUCTOR)
    assert done.stdout.strip() == "interrupted", done.stderr
    assert not done.stderr.strip(), done.stderr
