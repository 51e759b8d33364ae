"""Research studies: longer experiments whose write-ups are in the docs' studies page. Run one
from the repository root as `python -m studies.<name> --help`."""
