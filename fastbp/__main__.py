"""``python -m fastbp``: the command line (see :mod:`fastbp.cli`).

Commands: ``demo``, ``train``, ``predict``, ``export``, ``bench`` and ``digits``; run
``python -m fastbp --help`` for the list and ``python -m fastbp COMMAND --help``
for a command's options.  :func:`main` is also the ``fastbp`` console script.

:func:`missing_kernels` explains the one failure that happens before the
command line can start: a ``fastbp/`` source folder without the compiled
kernels, imported instead of the installed package (``python -m`` puts the
current folder first on ``sys.path``).
"""
from __future__ import annotations

import os
import sys
from typing import NoReturn

from .cli import EXIT_ERROR, main

__all__ = ["main", "missing_kernels"]


def missing_kernels(exc: ImportError) -> NoReturn:
    """Report that this ``fastbp`` package has no compiled kernels.

    Under ``python -m fastbp`` this prints one line, ``fastbp: error: ...``, and
    exits with status 2; on a plain ``import fastbp`` it raises ImportError
    with the same explanation (chained to ``exc``).
    """
    folder = os.path.dirname(os.path.abspath(__file__))
    message = (
        f"the fastbp package imported from {folder} has no compiled kernels "
        "(fastbp/_kernels*.so); it is a source folder, imported instead of the "
        "installed fastbp because it is in the current folder. Build the kernels in place "
        "(`python setup.py build_ext --inplace`, or `pip install -e .`, in the clone), or run "
        "from another folder to use the installed fastbp"
    )
    if sys.argv[:1] == ["-m"]:  # python -m fastbp: argv[0] is "-m" while the package loads
        print(f"fastbp: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_ERROR)
    raise ImportError(message) from exc


if __name__ == "__main__":
    sys.exit(main())
