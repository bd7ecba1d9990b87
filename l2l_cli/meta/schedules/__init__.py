"""Unroll schedules: how an optimizee run is cut into truncations, and the horizons meta-training goes through."""
