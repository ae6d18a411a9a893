"""The record of a training run."""
from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional, Union


class History:
    """What :meth:`fastbp.MLP.fit` returns: per-epoch lists of metrics.

    With ``optimizer=LBFGS(...)`` an "epoch" is one L-BFGS iteration (full
    batch): the lists have one entry per iteration, ``loss`` and ``accuracy``
    are measured at the iterate, and ``lr`` stays empty.

    Attributes
    ----------
    loss : list of float
        Mean over the epoch's samples of the per-sample training loss, each
        sample's loss taken in the forward pass of its batch, before that
        batch's update (the running loss, as Keras and PyTorch loops report it);
        with ``sample_weight``, the weighted mean Σ s_i ℓ_i / Σ s_i.
    accuracy : list of float
        The same running mean of per-sample accuracy, for classification losses
        (argmax for softmax outputs, the fraction of outputs on the right side
        of 1/2 for sigmoid outputs); empty for ``squared_error``.
    val_loss, val_accuracy : list of float
        Loss and accuracy on the validation data after each epoch; empty without
        validation data.
    lr : list of float
        Learning rate used in each epoch.
    seconds : list of float
        Wall time of each epoch (training and validation).
    best_epoch : int or None
        With early stopping, the (0-based) epoch whose weights were restored.
    stopped_early : bool
        Whether early stopping or a callback ended training before ``epochs``.
    workspace_bytes : int
        Bytes of memory the fit allocated, the sum of: the kernel workspace
        (one batch of activations and deltas, ``MLP.workspace_nbytes``); the
        gradient (with momentum, weight decay, clipping or an optimizer
        other than SGD) and the optimizer state arrays created by this fit;
        the rewind copy of the parameters (and optimizer state); the
        restore copy taken when callbacks or a schedule of one's own run; the
        best epoch's copies under early stopping; the converted copies of X,
        Y and the validation data when they needed conversion (dtype, memory
        order, labels made one-hot); the int64 permutations of the shuffle
        (two live at once); the validation workspace.  (For L-BFGS: the
        largest of the gradient call's workspace for all the rows and a loss
        call's, on the training or the validation rows; the gradient, the
        restore copy, and about 38 float64 vectors of n_params that scipy
        keeps, measured; within 15% of the traced peak, tested.)  Within a few percent
        of the peak that ``tracemalloc`` measures over the fit (tested); the
        transient temporaries of checking the input are not included.
    loss_name : str or None
        What the loss is, for :meth:`plot` (None: just "loss").
    """

    _KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds")

    def __init__(self) -> None:
        self.loss: List[float] = []
        self.accuracy: List[float] = []
        self.val_loss: List[float] = []
        self.val_accuracy: List[float] = []
        self.lr: List[float] = []
        self.seconds: List[float] = []
        self.best_epoch: Optional[int] = None
        self.stopped_early: bool = False
        self.workspace_bytes: int = 0
        self.loss_name: Optional[str] = None

    @property
    def epochs(self) -> int:
        """Number of completed epochs."""
        return len(self.loss)

    def record(self, logs: Dict[str, Any]) -> None:
        """Append one epoch's metrics (keys of ``logs`` that are History lists)."""
        for key in self._KEYS:
            if logs.get(key) is not None:
                getattr(self, key).append(float(logs[key]))

    def as_dict(self) -> Dict[str, List[float]]:
        """The per-epoch lists, by name."""
        return {key: list(getattr(self, key)) for key in self._KEYS}

    def figure(self, loss_name: Optional[str] = None) -> Any:
        """The loss (and accuracy) curves as a matplotlib Figure.

        Epochs are numbered from 1, on integer ticks.  Under early stopping, a
        marker shows the epoch whose weights were kept (:attr:`best_epoch`).

        Parameters
        ----------
        loss_name : str, optional
            What the loss is (e.g. ``"cross entropy"``), for the axis label and
            title; default :attr:`loss_name`, else just "loss".

        Raises
        ------
        ImportError
            When matplotlib is not installed (``pip install matplotlib``).
        """
        try:
            import matplotlib

            if "matplotlib.pyplot" not in sys.modules:
                matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("History.plot needs matplotlib: pip install matplotlib") from exc
        name = loss_name if loss_name is not None else self.loss_name
        panels = 2 if self.accuracy or self.val_accuracy else 1
        fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.5), squeeze=False)
        epochs = list(range(1, self.epochs + 1))
        ax = axes[0][0]
        ax.plot(epochs, self.loss, label="training loss")
        if self.val_loss:
            ax.plot(epochs, self.val_loss, label="validation loss")
        kept = self.best_epoch if self.best_epoch is not None and self.val_loss else None
        if kept is not None:
            ax.plot([kept + 1], [self.val_loss[kept]], linestyle="none", marker="o",
                    markersize=8, markerfacecolor="none", markeredgecolor="black",
                    label=f"kept epoch {kept + 1}")
        ax.set_ylabel("loss")
        ax.set_title(f"loss: {name}" if name else "loss")
        if min(self.loss + self.val_loss, default=1) > 0:
            ax.set_yscale("log")
            plain = FuncFormatter(lambda v, _: f"{v:g}")  # 0.4, not 4x10^-1
            ax.yaxis.set_major_formatter(plain)
            values = self.loss + self.val_loss
            # minor ticks labelled only within one decade (where there are no major ones)
            ax.yaxis.set_minor_formatter(plain if max(values) < 10 * min(values)
                                         else NullFormatter())
        ax.legend()
        if panels == 2:
            ax = axes[0][1]
            if self.accuracy:
                ax.plot(epochs, self.accuracy, label="training accuracy")
            if self.val_accuracy:
                ax.plot(epochs, self.val_accuracy, label="validation accuracy")
            if kept is not None and self.val_accuracy:
                ax.plot([kept + 1], [self.val_accuracy[kept]], linestyle="none", marker="o",
                        markersize=8, markerfacecolor="none", markeredgecolor="black",
                        label=f"kept epoch {kept + 1}")
            ax.set_ylabel("accuracy")
            ax.set_title("accuracy")
            ax.legend()
        for row in axes:
            for ax in row:
                ax.set_xlabel("epoch")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                if epochs:
                    ax.set_xlim(0.5, len(epochs) + 0.5)
        fig.tight_layout()
        return fig

    def plot(self, path: Union[str, "os.PathLike[str]"], loss_name: Optional[str] = None) -> None:
        """Write the loss (and accuracy) curves to a PNG file (see :meth:`figure`).

        Parameters
        ----------
        path : str or path-like
            Output file name.
        loss_name : str, optional
            What the loss is, for the axis label and title (default :attr:`loss_name`).

        Raises
        ------
        ImportError
            When matplotlib is not installed (``pip install matplotlib``).
        """
        fig = self.figure(loss_name)
        import matplotlib.pyplot as plt

        try:
            fig.savefig(path, dpi=100)
        finally:
            plt.close(fig)

    def __repr__(self) -> str:
        last = self.loss[-1] if self.loss else None
        return f"History(epochs={self.epochs}, loss={last})"
