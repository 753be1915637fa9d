"""Evaluation: pure metric functions (ranking, classification, calibration) and the
Markdown report with its plots.
"""
