"""Benchmarks that ship with the engine: Wan2.1 at its real shapes with seeded random weights, and the speed ladder
(``python -m dax_core bench``) that measures every acceleration against the same run's stock forward."""
