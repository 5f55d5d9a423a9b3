"""curate room."""
