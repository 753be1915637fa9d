"""The models: from Feast point-in-time features to a registered, served ensemble.

Sub-packages by concern: ``config`` (YAML hyper-parameters), ``data`` (vocabularies,
decision points, Feast frames, model inputs), ``candidates`` (candidate retrieval shared
by training and serving), ``models`` (one model per module, one contract),
``training`` (the recipe and train-register-report), ``evaluation`` (metrics, report),
``registry`` (versioned artefacts without pickle), ``serving`` (``Recommender`` and the
HTTP app), ``cli`` (the model commands). Data flows in that order; a module imports only
sub-packages listed before its own, except the leaves ``evaluation.metrics`` (used by the
LSTM's early stopping) and ``progress`` (stage lines and bars), and ``registry`` (used by
the train-register workflow).
"""
