"""Feature computation in SQL: the ``.sql`` files in ``sql/`` and the runner that applies
them incrementally (watermarks, window exits) to the feature-source tables Feast reads.
"""
