"""Helper processes the benchmarks start (not benchmarks themselves)."""
