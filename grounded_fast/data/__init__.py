"""Data: loaders for the real formats and the built-in demo corpus (filled in by issue 5's work)."""
