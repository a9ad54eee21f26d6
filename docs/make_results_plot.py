r"""Draws the README's results plot (`docs/results.png`) from the figures of docs/results.md.

The figures are the relative EPE (EPE over each pair's zero-flow EPE, lower is better) that
`python evaluate.py --checkpoint=cmp_tf/pretrained/default` prints for the shipped model and
the classical fills on 32 pairs of the held-out carphone clip; they are copied here, so the
plot needs no model, data or run directory:

  python docs/make_results_plot.py [--out=docs/results.png]
"""
import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
KS = (1, 5, 10, 25, 100, 400)
# Relative EPE per guidance strategy and method, one value per K in KS (docs/results.md).
RESULTS = {
    "watershed": {
        "CMP (shipped)": (0.95, 0.53, 0.42, 0.32, 0.18, 0.097),
        "nearest": (1.81, 0.71, 0.53, 0.41, 0.25, 0.15),
        "linear": (1.81, 0.72, 0.53, 0.40, 0.22, 0.114),
        "Gaussian splatting": (0.90, 0.69, 0.56, 0.39, 0.20, 0.11),
        "EpicFlow": (1.81, 1.35, 0.72, 0.60, 0.39, 0.27),
    },
    "uniform": {
        "CMP (shipped)": (0.81, 0.55, 0.44, 0.30, 0.135, 0.054),
        "nearest": (0.86, 0.60, 0.49, 0.34, 0.18, 0.09),
        "linear": (0.86, 0.59, 0.47, 0.31, 0.142, 0.058),
        "Gaussian splatting": (0.96, 0.79, 0.65, 0.41, 0.16, 0.09),
        "EpicFlow": (0.86, 1.29, 0.84, 0.58, 0.29, 0.17),
    },
}
STYLE = {  # the model stands out; the classical fills are thinner and dashed
    "CMP (shipped)": dict(color="#d62728", linewidth=2.6, marker="o", zorder=3),
    "nearest": dict(color="#1f77b4", linewidth=1.4, marker="s", linestyle="--"),
    "linear": dict(color="#2ca02c", linewidth=1.4, marker="^", linestyle="--"),
    "Gaussian splatting": dict(color="#9467bd", linewidth=1.4, marker="v", linestyle="--"),
    "EpicFlow": dict(color="#7f7f7f", linewidth=1.4, marker="D", linestyle=":"),
}
Y_LIMIT = 1.9  # above every value: zero flow is 1.0, the sparse fills reach 1.81 at K = 1
DPI = 100


def draw(out):
    """Two panels, watershed and uniform guidance, relative EPE against K on a log axis."""
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.9), sharey=True)
    for axis, (strategy, methods) in zip(axes, RESULTS.items()):
        for name, values in methods.items():
            if len(values) != len(KS):
                raise ValueError(f"RESULTS[{strategy!r}][{name!r}] must hold {len(KS)} values "
                                 f"(one per K in {KS}); got {len(values)}.")
            axis.plot(KS, values, label=name, markersize=4, **STYLE[name])
        axis.axhline(1.0, color="black", linewidth=0.8, linestyle="-", alpha=0.5)
        axis.text(KS[-1], 1.02, "zero flow", ha="right", va="bottom", fontsize=8, alpha=0.7)
        axis.set_xscale("log")
        axis.set_xticks(KS, [str(k) for k in KS])
        axis.xaxis.set_minor_locator(ticker.NullLocator())
        axis.set_ylim(0, Y_LIMIT)
        axis.set_xlabel("guidance points K")
        axis.set_title(f"{strategy} guidance")
        axis.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("EPE / zero-flow EPE (lower is better)")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(labels),
                  frameon=False)
    figure.suptitle("Held-out carphone clip, 32 pairs at 128²", fontsize=10)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    figure.savefig(out, dpi=DPI)
    plt.close(figure)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(HERE, "results.png"))
    print("Wrote", draw(parser.parse_args().out))


if __name__ == "__main__":
    main()
