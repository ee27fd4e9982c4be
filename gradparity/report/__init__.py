"""The report object and its renderings: JSON, Markdown, HTML, CSV, terminal and plots."""
