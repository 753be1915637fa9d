"""Logged feedback on recommendations: what was shown (``impression_log``), the daily
feedback features Feast serves (``features``), and drift in the logged behaviour (``drift``)."""
