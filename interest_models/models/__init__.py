"""The models, one per module, all honouring ``base.Model`` (fit / score / save / load):
``InterestShiftLSTM`` with its ``CategoryBooster`` head, ``ItemRanker``, ``Blend`` and the
baselines (``MostPopular``, ``PopularInLastCategory``, ``ItemKNN``, ``PersonalFrequency``,
``CoPurchase``). No database or Feast access here.
"""
