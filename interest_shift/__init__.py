"""The application on top of both packages: the ``interest`` command line and the project
template (``interest init``: a Feast feature repo and configs for the user's own project).

It is the only place that imports both ``materialize`` and ``interest_models`` to chain
them (``interest run``). ``feature_repo`` here is the repository's ``feature_repo/``,
shipped inside the wheel.
"""
