"""kvplan planner: model and hardware catalogs, cost models, and the plan search."""

__version__ = "0.1.0"
