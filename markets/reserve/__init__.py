"""Synchronized (spinning) reserve as a product of its own: event performance from meter values and its settlement."""
