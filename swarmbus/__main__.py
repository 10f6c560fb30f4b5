"""``python -m swarmbus``: the same as the ``swarmbus`` command."""

from __future__ import annotations

from .cli import run

if __name__ == "__main__":
    run()
