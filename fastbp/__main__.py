"""``python -m fastbp``: the command line (see :mod:`fastbp.cli`).

Commands: ``demo``, ``train``, ``predict``, ``bench`` and ``digits``; run
``python -m fastbp --help`` for the list and ``python -m fastbp COMMAND --help``
for a command's options.  :func:`main` is also the ``fastbp`` console script.
"""
from __future__ import annotations

import sys

from .cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
