"""Building examples and inputs: the item vocabulary, decision points and their splits,
features through Feast point-in-time retrieval, the ranking feature matrix and the
sequence model's padded inputs. Shared by training and serving; no model lives here.
"""
