"""The data plane: raw files -> PostgreSQL -> SQL features -> text embeddings -> Feast.

Sub-packages by concern: ``database`` (server and tables), ``ingest`` (schemas,
validation, sources, bulk loading), ``features`` (feature SQL), ``embeddings`` (item text
vectors), ``feature_store`` (the Feast glue). ``pipeline.Pipeline`` is the facade over
them, ``settings`` reads every configuration, ``cli`` holds the data commands. Nothing
here imports ``interest_models``.
"""
