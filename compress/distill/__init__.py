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
* :mod:`compress.distill.trainer`: the training loop, evaluation and checkpoints.

The recipe (``compress.recipes.distill``) ties them together behind
``compress(teacher, DistillConfig(...), context) -> student``.
"""

from compress.distill.student import default_layer_map, make_student, resolve_layer_maps

__all__ = ["default_layer_map", "make_student", "resolve_layer_maps"]
