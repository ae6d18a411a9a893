"""Benchmark harness for fastbp.

Run ``python -m bench`` (or ``python bench/run.py``) from the repository root;
``python -m bench --help`` lists the options.  Each peer (fastbp, a hand-written
numpy implementation, PyTorch, scikit-learn and the pure-Python reference) is
timed on one epoch of shuffled mini-batch SGD on random data, in a fresh
subprocess per peer and configuration so that peak memory can be measured.

Modules
-------
configs
    The benchmark configurations and their FLOP counts.
numpy_mlp
    A matrix-form numpy MLP, the hand-written peer.
peers
    One epoch-runner factory per peer.
worker
    What runs in each subprocess: thread limits, timing and peak memory.
run
    The command line: runs the workers and writes the table, JSON and chart.
report
    Formatting of the table and the bar chart.
"""
