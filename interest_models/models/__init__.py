"""The models, one per module, all honouring ``base.Model`` (fit / score / save / load):
``InterestShiftLSTM``, ``ItemRanker``, ``Blend`` and the baselines (``MostPopular``,
``PopularInLastCategory``, ``ItemKNN``, ``PersonalFrequency``, ``CoPurchase``). No database
or Feast access here.
"""
