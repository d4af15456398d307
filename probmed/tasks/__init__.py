"""The trainable things ProbMed offers, one LightningModule each, registered as subcommands by :mod:`probmed.cli`:

* :mod:`probmed.tasks.binding` — :class:`ProbMedModule`, the multimodal probabilistic binding model
  (``probmed fit|validate|test|predict``);
* :mod:`probmed.tasks.distill` — :class:`TextDistillation`, M3Bind's stage 2 (``probmed distill ...``);
* :mod:`probmed.tasks.soft_prompt` — :class:`SoftPromptQA`, MEDBind-style soft-prompt answering
  (``probmed prompt ...``).
"""
