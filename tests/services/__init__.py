"""Tests of the example services (services/) as real processes."""
