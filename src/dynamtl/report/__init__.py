"""Reports of runs: plots of task weights and validation metrics, comparison tables, the
noise task's share of the helper weight.

The plots need matplotlib: ``pip install 'dynamtl[report]'``.
"""

from dynamtl.report.plots import (
    metrics_figure,
    plot_run,
    plot_share_comparison,
    plot_weights_comparison,
    share_comparison_figure,
    weights_comparison_figure,
    weights_figure,
)
from dynamtl.report.shares import Share, helper_share
from dynamtl.report.tables import compare_table

__all__ = [
    "Share",
    "compare_table",
    "helper_share",
    "metrics_figure",
    "plot_run",
    "plot_share_comparison",
    "plot_weights_comparison",
    "share_comparison_figure",
    "weights_comparison_figure",
    "weights_figure",
]
