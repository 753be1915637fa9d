"""Training: the recipe that trains and evaluates every model on what the feature store
holds (``recipe``), and train-register-report on a pipeline's database (``workflow``).
"""
