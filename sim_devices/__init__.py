"""Simulated twins: one physics model per instrument family, with a wire front where the real instrument has one."""
