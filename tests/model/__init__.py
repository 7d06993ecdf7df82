"""model tests."""
