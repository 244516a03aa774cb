"""Training and fine-tuning: the run's configuration (``config``, import-light for the command
line), the trainer (``trainer``), the losses (``losses``) and LPIPS (``lpips``).

May import: evaluation, data, hub, models, conversion, utils.
"""
