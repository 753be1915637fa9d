"""Simulated shoppers answering recommendations, and the feedback loop run over simulated
days (serve, log, learn, serve again) to compare policies against an oracle."""
