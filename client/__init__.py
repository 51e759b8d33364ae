"""Starting Triton and talking to it."""

import os

# gRPC's C core logs every failed TLS handshake and retry to stderr at INFO level; a user
# mistake must stay one line (the client's own error says what failed).
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import gevent.hub  # noqa: E402 - tritonclient.http's event loop

# A stop signal (SIGINT, or SIGTERM / SIGHUP as asen.signals raises them) that arrives while
# gevent's event loop runs is raised inside the loop. gevent passes it on to the main
# greenlet, where the command ends with its one line, but first prints it as an error with a
# traceback. A stop is not an error; NOT_ERROR is gevent's documented list of such types.
gevent.hub.Hub.NOT_ERROR = (*gevent.hub.Hub.NOT_ERROR, KeyboardInterrupt)
