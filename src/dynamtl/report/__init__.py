"""Reports of runs: plots of task weights and validation metrics, comparison tables.

The plots need matplotlib: ``pip install 'dynamtl[report]'``.
"""

from dynamtl.report.plots import (
    metrics_figure,
    plot_run,
    plot_weights_comparison,
    weights_comparison_figure,
    weights_figure,
)
from dynamtl.report.tables import compare_table

__all__ = [
    "compare_table",
    "metrics_figure",
    "plot_run",
    "plot_weights_comparison",
    "weights_comparison_figure",
    "weights_figure",
]
