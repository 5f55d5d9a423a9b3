"""harvest room."""
