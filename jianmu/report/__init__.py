"""Reports made from result objects: rich tables, markdown, HTML, plots."""
