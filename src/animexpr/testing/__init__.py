"""Stand-ins that users run too: drawn faces with a known answer for every expression."""
