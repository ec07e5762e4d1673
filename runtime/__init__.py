"""kvplan's runtime: executes a plan for real and measures it (docs/runtime.md)."""
