"""Test plugin without a load() function."""

VALUE = 1
