"""``switchboard bench …``: commands that print figures (never tests)."""
