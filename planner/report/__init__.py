"""`kvplan report`: capacity planning across models, GPUs and contexts (docs/report.md).

options.py parses the command's values, grid.py holds the grid's typed records (cells, results, one
row per strategy), execute.py solves each cell once (here, on a process pool or on Dask) with
progress.py reporting, frame.py tabulates the plans, figures.py and tables.py summarise them,
console.py fits a table to the terminal, html.py renders HTML and Markdown, write.py writes the
report folder whole.
"""
