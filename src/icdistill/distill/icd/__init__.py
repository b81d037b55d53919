"""ICD (Kang et al., NeurIPS 2021): the module (:mod:`.module`), its losses (:mod:`.losses`),
instance sampling (:mod:`.sampling`), diagnostics (:mod:`.diagnostics`), attention pictures
(:mod:`.pictures`), the attention-weight ablation (:mod:`.ablation`) and its config section,
per-family defaults, builder and registration (:mod:`.build`)."""

from icdistill.distill.icd import build as _registration  # noqa: F401  (registers the method)
