"""`kvplan report`: capacity planning across models, GPUs and contexts (docs/report.md).

sweep.py expands and solves the grid, frame.py tabulates the plans, figures.py and tables.py
summarise them, html.py renders HTML and Markdown, write.py writes the report folder.
"""
