"""The model registry: versioned folders of saved models with a manifest and checksums,
verified against the feature store before loading, and the ``SERVING`` pointer.
"""
