"""Getting data in: the documented input schemas, row validation with quarantine, the data
sources (synthetic shop, MovieLens-100K) and the COPY-based loader into ``interest.*`` tables.
"""
