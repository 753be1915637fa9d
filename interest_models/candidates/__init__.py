"""Candidate retrieval: the sources a ranker re-orders (LSTM top items, popular, same
category, text neighbours) and nearest-neighbour search in process or with pgvector.
"""
