"""Training engine: setup, the step, the loop, what a run writes; optimisers and schedules."""

from icdistill.engine.optim import (
    build_method_optimizer,
    build_method_scheduler,
    build_student_optimizer,
    build_student_scheduler,
    clip_gradients,
    scale_lr,
    warmup_multistep_lambda,
)

__all__ = [
    "build_method_optimizer",
    "build_method_scheduler",
    "build_student_optimizer",
    "build_student_scheduler",
    "clip_gradients",
    "scale_lr",
    "warmup_multistep_lambda",
]
