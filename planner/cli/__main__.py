"""`python -m planner.cli ...` is `kvplan ...`."""

from planner.cli import main

main(prog_name="kvplan")
