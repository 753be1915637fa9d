"""Data sources that produce frames in the documented input schemas: the synthetic shop
with planted interest shifts, and MovieLens-100K read from the recbole wheel.
"""
