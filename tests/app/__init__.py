"""app tests."""
