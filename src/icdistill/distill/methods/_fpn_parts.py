"""Parts shared by the parameter-light FPN-feature methods (CWD, PKD, MGD): config-value checks
that name ``distill.<method>.<key>``, the choice of distilled levels, the student-to-teacher
adapter, and per-family defaults laid out over the family table.

A module whose name starts with ``_`` is a shared part, not a method: the method registry skips it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence, TypeVar

from torch import Tensor

from icdistill.detectors.families import FAMILY_TABLE, FamilyFacts
from icdistill.distill.methods._parts import LevelAdapters
from icdistill.errors import ConfigError

if TYPE_CHECKING:
    from icdistill.distill.core.inputs import DistillInputs

# ``auto``: a 1x1 conv only where the widths differ (what the originals that have an adapter do:
# pppppM's CWD, MGD's ``align``); ``1x1``: always; ``none``: equal widths required.
ADAPTER_CHOICES = ("auto", "1x1", "none")

Defaults = TypeVar("Defaults")


def require_positive(section: str, key: str, value: float | None) -> None:
    """ConfigError unless ``value`` is None or > 0."""
    if value is not None and not value > 0:
        raise ConfigError(f"config key 'distill.{section}.{key}' must be a positive number, got {value!r}")


def require_fraction(section: str, key: str, value: float | None) -> None:
    """ConfigError unless ``value`` is None or strictly between 0 and 1."""
    if value is not None and not 0 < value < 1:
        raise ConfigError(f"config key 'distill.{section}.{key}' must lie strictly between 0 and 1, got {value!r}")


def require_choice(section: str, key: str, value: str, choices: Sequence[str]) -> None:
    """ConfigError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(
            f"config key 'distill.{section}.{key}' is {value!r}; valid choices: {', '.join(choices)}"
        )


def per_family(one_stage: Defaults, two_stage: Defaults, rule: Callable[[FamilyFacts, Defaults], Defaults]
               ) -> dict[str, Defaults]:
    """``rule(facts, one_stage or two_stage)`` for every family of the family table, by its kind."""
    return {name: rule(facts, two_stage if facts.two_stage else one_stage) for name, facts in FAMILY_TABLE.items()}


def levels_on_family(wanted: Sequence[str], facts: FamilyFacts) -> tuple[str, ...]:
    """The ``wanted`` levels the family has, in its order; all its levels when it has none of them
    (the single-map C4 / DC5 families: the method runs on that one map)."""
    present = tuple(name for name in facts.levels.names if name in wanted)
    return present or tuple(facts.levels.names)


def choose_levels(default: Sequence[str], available: Sequence[str], configured: bool) -> tuple[str, ...]:
    """The levels a method distils: all of ``available`` (the levels the distiller hands over)
    when the user chose them (``distill.levels`` given), else the family's ``default`` restricted
    to ``available`` (all of ``available`` if none is left)."""
    if configured:
        return tuple(available)
    return tuple(name for name in available if name in default) or tuple(available)


def build_adapters(section: str, choice: str, student_channels: int, teacher_channels: int,
                   num_levels: int) -> LevelAdapters | None:
    """One 1x1 conv per level, student width -> teacher width (PyTorch's default init), or None.

    ``auto`` builds them only when the widths differ; ``none`` with different widths is a
    ConfigError naming ``distill.<section>.adapter``."""
    require_choice(section, "adapter", choice, ADAPTER_CHOICES)
    if choice == "none" and student_channels != teacher_channels:
        raise ConfigError(
            f"config key 'distill.{section}.adapter' is 'none' but the student's features have {student_channels} "
            f"channels and the teacher's {teacher_channels}; use 'auto' or '1x1'"
        )
    if choice == "none" or (choice == "auto" and student_channels == teacher_channels):
        return None
    return LevelAdapters("1x1", student_channels, teacher_channels, num_levels)


def adapt(adapters: LevelAdapters | None, student_levels: Sequence[Tensor]) -> list[Tensor]:
    """The student's levels float[B, C_s, H, W] mapped to C_t channels (unchanged without adapters)."""
    return list(student_levels) if adapters is None else adapters(student_levels)


@dataclass(frozen=True)
class LevelWeight:
    """An original's per-family setting of a feature method: the weight of every level and the levels."""

    loss_weight: float
    levels: tuple[str, ...]


def adapted_student_levels(inputs: "DistillInputs", levels: Sequence[str],
                           adapters: LevelAdapters | None) -> tuple[list[int], list[Tensor]]:
    """The indices of ``levels`` among the distilled levels and the student's maps there, mapped to
    the teacher's width (float[B, C_t, H, W] each)."""
    index = [inputs.levels.index(name) for name in levels]
    return index, adapt(adapters, [inputs.student_levels[i] for i in index])
