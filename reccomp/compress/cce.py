"""Placeholder: the method is being written (not registered yet)."""
