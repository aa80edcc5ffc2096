"""Switchboard test suite."""
