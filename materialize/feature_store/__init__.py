"""The Feast glue: opening the feature repo's store on the configured database, ``apply``,
materialization into the online store, and fast point-in-time training frames. Feast
store plugins (offline and online) belong here.
"""
