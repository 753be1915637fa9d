"""Item text embeddings: the canonical item text and its hash, the all-MiniLM-L6-v2
embedder (CPU or CUDA), and embedding only the texts not embedded before.
"""
