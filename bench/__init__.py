"""Benchmark harness for fastbp.

Run ``python -m bench`` (or ``python bench/run.py``) from the repository root;
``python -m bench --help`` lists the options.  Each peer (fastbp, a hand-written
numpy implementation, PyTorch eager, torch.compile of a step and of the whole
epoch, JAX jit + lax.scan, scikit-learn and the pure-Python reference) is
checked against a float64 numpy run of its first epoch and then timed on one
epoch of shuffled mini-batch SGD on random data, from the same initial weights
in the same batch order, in a fresh subprocess per peer and configuration so
that peak memory and per-thread CPU time can be measured.

Modules
-------
configs
    The benchmark configurations and their FLOP counts.
numpy_mlp
    A matrix-form numpy MLP, the hand-written peer.
peers
    One trainer factory per peer, the shared initial weights and batch order.
verify
    The check against float64 numpy every peer passes before it is timed.
worker
    What runs in each subprocess: thread limits, timing and peak memory.
run
    The command line: runs the workers and writes the table, JSON and chart.
report
    Formatting of the table, the best-peer ratios and the bar chart.
fma_peak
    Builds and runs ``c/fma_peak.c``, the machine's FMA peak per ISA.
"""
