"""Real instrument drivers: one module per instrument family."""
