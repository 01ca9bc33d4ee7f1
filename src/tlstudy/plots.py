"""Figures, drawn with matplotlib's non-interactive Agg backend."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def learning_curve(history, path, title=""):
    """Train and val loss per epoch of one trial, saved as a PNG at `path`."""
    epochs = [e["epoch"] for e in history]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.plot(epochs, [e["train_loss"] for e in history], "o-", label="train loss")
    ax.plot(epochs, [e["val_loss"] for e in history], "s-", label="val loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
