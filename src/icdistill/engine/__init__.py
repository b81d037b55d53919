"""Training engine: checkpoints, optimisers and schedules."""

from icdistill.engine.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from icdistill.engine.optim import (
    build_icd_optimizer,
    build_icd_scheduler,
    build_student_optimizer,
    build_student_scheduler,
    clip_gradients,
    scale_lr,
    warmup_multistep_lambda,
)

__all__ = [
    "build_icd_optimizer",
    "build_icd_scheduler",
    "build_student_optimizer",
    "build_student_scheduler",
    "capture_rng_state",
    "clip_gradients",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
    "scale_lr",
    "warmup_multistep_lambda",
]
