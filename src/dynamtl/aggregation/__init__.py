"""Aggregations: how the λ-weighted task gradients of the shared parameters are combined."""

from dynamtl.aggregation.base import Aggregation, GradientAggregation
from dynamtl.aggregation.sum import Sum

__all__ = ["Aggregation", "GradientAggregation", "Sum"]
