"""Attacks used inside training objectives (pure functions, no optimizer or parameter state)."""
