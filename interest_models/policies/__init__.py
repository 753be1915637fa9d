"""Recommendation policies that re-rank the blend's top candidates.

``context`` turns one request's candidates, the user's Feast features and the logged
feedback into a context matrix; ``slate`` places k of the candidates on the list and gives
the exact probability of each (item, position); ``linear_bandit`` is the learned part
(linear UCB); ``reranking`` holds the two policies a request can ask for (``greedy``: the
blend's order, ``bandit``: learned, explored, diversified).
"""
