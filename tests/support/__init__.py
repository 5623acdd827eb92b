"""Helpers shared by the test suites (servers started on loopback, data generators)."""
