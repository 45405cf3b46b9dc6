"""``adapterhub eval --plot out.png``: exact match and ROUGE-L per reference as grouped bars.

matplotlib is optional (the ``bench`` extra); without it the caller gets one clear line.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import AdapterHubError
from .compare import EvalReport

__all__ = ["plot_report"]


def plot_report(report: EvalReport, out: str | os.PathLike) -> None:
    """Write a PNG (or any format matplotlib infers from ``out``) of the report's scores."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise AdapterHubError("--plot needs matplotlib (pip install 'adapterhub[bench]' or pip install matplotlib)") from e
    refs = [s.ref for s in report.scores]
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(refs) + 1.5), 3.6))
    xs = range(len(refs))
    for offset, metric, label in ((-width / 2, "exact_match", "exact match"), (width / 2, "rouge_l", "ROUGE-L")):
        values = [getattr(s, metric) for s in report.scores]
        bars = ax.bar([x + offset for x in xs], values, width, label=label)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=8)
    ax.set_xticks(list(xs), [f"{s.ref}\n({s.adapter_type})" for s in report.scores], fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score")
    data = Path(report.data)
    ax.set_title(f"{data.parent.name}/{data.name} ({report.rows} rows)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
