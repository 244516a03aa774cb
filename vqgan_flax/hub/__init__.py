"""The Hub/base layer: where a model's files are (``resolve``: a folder or a Hub id), the base
class under the model (transformers' ``FlaxPreTrainedModel`` or our ``FlaxHubModel``, ``base``),
``FlaxVQGANModel`` itself (loading, saving, ``params=`` calls, the compiled runtime: ``modeling``,
``compiled``), and which model made a set of tokens (``identity``).

May import: models, conversion, utils.
"""
