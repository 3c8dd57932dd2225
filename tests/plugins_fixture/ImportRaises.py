"""Test plugin that fails while being imported."""

raise ImportError("a dependency is missing")
