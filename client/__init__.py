"""Starting Triton and talking to it."""

import os

# gRPC's C core logs every failed TLS handshake and retry to stderr at INFO level; a user
# mistake must stay one line (the client's own error says what failed).
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
