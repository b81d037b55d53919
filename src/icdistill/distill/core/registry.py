"""The registry of distillation methods: what each is, what it needs, where it is native.

A method module registers itself once, at import, with a :class:`MethodSpec`::

    SPEC = register_method(MethodSpec(name="fitnet", section=FitNetConfig, build=build_fitnet,
                                      needs={ONE_STAGE: frozenset(), TWO_STAGE: frozenset()},
                                      native=frozenset(FAMILIES), paper="Romero et al., ICLR 2015"))

Methods are found by importing every module of the package :mod:`icdistill.distill.methods`
(modules whose name starts with ``_`` are shared parts, not methods) and the package
:mod:`icdistill.distill.icd.module`: adding a method is adding one module, with no central list to
edit. The config tree (:mod:`icdistill.config`) takes one section ``distill.<name>`` per
registered method from ``section``.

Whether a method runs on a detector family follows from what the method needs and what the
family's adapter provides (:func:`check_capability`): the family's kind (``one_stage`` /
``two_stage``) must be a key of ``needs`` and the student's and the teacher's adapters must both
provide the extras (names of :mod:`icdistill.detectors.extras`) listed there. The generic check
runs once, in :func:`icdistill.distill.build.build_method`, before ``build``; a builder checks
only what is specific to it. Families outside ``native`` are this project's adaptation of the
method, labelled ``[ADAPT]`` (:func:`support_label`).

Deviation from the contract the method helpers code against (an addition with a default, so a
spec written without it stays valid): ``former_keys``, the flat ``distill.<key>`` names that
held the method's settings before it had a section; a config still setting one is refused with
a message naming ``distill.<name>.<key>``.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, is_dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from icdistill.detectors.families import family_facts
from icdistill.errors import ConfigError

if TYPE_CHECKING:
    from icdistill.detectors.base import DetectorAdapter
    from icdistill.distill.core.context import MethodContext
    from icdistill.distill.core.method import DistillMethod

ONE_STAGE, TWO_STAGE = "one_stage", "two_stage"
KINDS = (ONE_STAGE, TWO_STAGE)
NATIVE, ADAPT = "native", "[ADAPT]"
# `distill.method: none` is plain training; no method may take the name.
NO_METHOD = "none"
# The packages whose modules are methods (every module of the first; the second is one method).
METHOD_PACKAGES = ("icdistill.distill.methods",)
METHOD_MODULES = ("icdistill.distill.icd.module",)
# Methods not yet moved into icdistill.distill.methods: imported like the others until they are.
NOT_YET_MOVED = (
    "icdistill.distill.mimic", "icdistill.distill.fgfi", "icdistill.distill.chen2017",
    "icdistill.distill.fbkd", "icdistill.distill.gid", "icdistill.distill.defeat",
)


@dataclass(frozen=True)
class MethodSpec:
    """One distillation method as the rest of the toolkit sees it.

    Attributes:
        name: the ``distill.method`` value (also its config section, ``distill.<name>``).
        section: a frozen dataclass, the ``distill.<name>`` config section.
        build: ``(its own section, MethodContext) -> DistillMethod``.
        needs: detector kind (``one_stage`` / ``two_stage``) -> the extras the student AND the
            teacher adapters must provide; a kind that is absent: the method is not defined there.
        native: the families the original method was published or released on; every other family
            it runs on is this project's adaptation, ``[ADAPT]``.
        paper: a one-line citation, e.g. ``"Shu et al., ICCV 2021"``.
        warmup_iters: the default of ``distill.warmup_iters`` for this method.
        former_keys: flat ``distill.<key>`` names that held this method's settings before it had
            its own section (refused, naming ``distill.<name>.<key>``).
    """

    name: str
    section: type
    build: Callable[[Any, "MethodContext"], "DistillMethod"]
    needs: Mapping[str, frozenset[str]]
    native: frozenset[str]
    paper: str
    warmup_iters: int = 0
    former_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name == NO_METHOD:
            raise ValueError(f"a method name must be an identifier other than {NO_METHOD!r}, got {self.name!r}")
        if not is_dataclass(self.section):
            raise ValueError(f"method {self.name!r}: section must be a dataclass, got {self.section!r}")
        unknown = set(self.needs) - set(KINDS)
        if unknown:
            raise ValueError(f"method {self.name!r}: needs has unknown kinds {sorted(unknown)}; valid: {KINDS}")


_REGISTRY: dict[str, MethodSpec] = {}
_discovered = False


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to the registry (once per name) and return it."""
    known = _REGISTRY.get(spec.name)
    if known is not None and known.section.__qualname__ != spec.section.__qualname__:
        raise ValueError(f"distillation method {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def discover_methods() -> None:
    """Import every method module (see the module docstring); idempotent."""
    global _discovered
    if _discovered:
        return
    _discovered = True  # before the imports: a method module importing this one must not recurse
    modules = list(METHOD_MODULES) + list(NOT_YET_MOVED)
    for package_name in METHOD_PACKAGES:
        package = importlib.import_module(package_name)
        modules += [f"{package_name}.{m.name}" for m in pkgutil.iter_modules(package.__path__)
                    if not m.name.startswith("_")]
    for module in modules:
        importlib.import_module(module)


def method_names() -> tuple[str, ...]:
    """The registered methods' names, sorted."""
    discover_methods()
    return tuple(sorted(_REGISTRY))


def method_spec(name: str) -> MethodSpec:
    """The spec of method ``name``; ConfigError listing the valid names otherwise."""
    discover_methods()
    if name not in _REGISTRY:
        raise ConfigError(
            f"config key 'distill.method' is {name!r}; valid choices: {', '.join((*method_names(), NO_METHOD))}"
        )
    return _REGISTRY[name]


def method_sections() -> dict[str, type]:
    """``{name: section dataclass}`` of every registered method, sorted by name."""
    return {name: method_spec(name).section for name in method_names()}


def family_kind(family: str) -> str:
    """``two_stage`` or ``one_stage`` (ConfigError for an unknown family)."""
    return TWO_STAGE if family_facts(family).two_stage else ONE_STAGE


def missing_capability(spec: MethodSpec, family: str, provided: frozenset[str]) -> str | None:
    """Why ``spec`` cannot run with a ``family`` detector providing the extras ``provided``, in
    words naming what is missing; None when it can."""
    kind = family_kind(family)
    if kind not in spec.needs:
        defined = " or ".join(k.replace("_", "-") for k in spec.needs) or "no"
        return (f"distill.method {spec.name!r} is defined for {defined} detectors; {family} is "
                f"{kind.replace('_', '-')}")
    missing = sorted(spec.needs[kind] - provided)
    if missing:
        return (f"distill.method {spec.name!r} needs the extras {', '.join(missing)} from a {kind.replace('_', '-')} "
                f"detector; the {family} adapter provides only {_provided(provided)}")
    return None


def check_capability(spec: MethodSpec, student: "DetectorAdapter", teacher: "DetectorAdapter") -> None:
    """ConfigError naming what is missing unless the student's kind of detector is one ``spec``
    is defined for and both detectors provide the extras it needs there."""
    reason = missing_capability(spec, student.family, student.supported_extras)
    if reason is None:
        missing = sorted(spec.needs[family_kind(student.family)] - teacher.supported_extras)
        if missing:
            reason = (f"distill.method {spec.name!r} needs the extras {', '.join(missing)} from the teacher as well; "
                      f"the {teacher.family} teacher provides only {_provided(teacher.supported_extras)}")
    if reason:
        raise ConfigError(reason)


def _provided(extras: frozenset[str]) -> str:
    return ", ".join(sorted(extras)) or "its features"


def support_label(spec: MethodSpec, family: str) -> str:
    """``native`` on a family the original method was published or released on, else ``[ADAPT]``."""
    return NATIVE if family in spec.native else ADAPT
