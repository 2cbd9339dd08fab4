"""Knowledge distillation into a shallower copy of the teacher (DistilBERT-style).

Sanh et al. 2019, "DistilBERT, a distilled version of BERT: smaller, faster, cheaper
and lighter" (arXiv:1910.01108): the student keeps one block in two of the teacher,
initialised from them, and is trained on a soft-target loss (KL at temperature T), the
task loss on hard labels and a cosine loss aligning hidden states.

* :mod:`compress.distill.student`: layer maps and student construction;
* :mod:`compress.distill.losses`: the loss terms;
* :mod:`compress.distill.data`: rows -> token ids -> deterministic batches;
* :mod:`compress.distill.step`: one forward pass and the weighted loss;
* :mod:`compress.distill.teacher`: teacher outputs on the fly or cached on disk;
* :mod:`compress.distill.trainer`: the training loop, evaluation and checkpoints;
* :mod:`compress.distill.inputs`: the task, training and held-out examples, collator;
* :mod:`compress.distill.recovery`: for ``recover`` (distilling a compressed model from
  the dense one, Minitron, arXiv:2407.14679): student-to-teacher block maps, width
  projections, held-out KL to the teacher.

The recipe (``compress.recipes.distill``) ties them together behind
``compress(teacher, DistillConfig(...), context) -> student``; ``compress.recipes.recover``
behind ``compress(student, RecoverConfig(...), Context(teacher=...)) -> student``.
"""

from compress.distill.student import default_layer_map, make_student, resolve_layer_maps

__all__ = ["default_layer_map", "make_student", "resolve_layer_maps"]
