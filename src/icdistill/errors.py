"""Errors a user can cause. The CLI prints their message without a traceback.

Each message names the file, key or value at fault and, where it can, what to do instead.
"""


class ICDistillError(Exception):
    """Base class of every user-facing error."""


class ConfigError(ICDistillError):
    """A config key, type or value is wrong."""


class DataError(ICDistillError):
    """A dataset file is missing, unreadable or malformed."""


class ModelMismatchError(ICDistillError):
    """Teacher, student and data disagree (classes, feature levels, checkpoint contents)."""


class TeacherCheckError(ModelMismatchError):
    """The teacher check before distilling failed: the teacher's box AP on test images is below
    ``distill.check_teacher_min_ap`` or its saved class names differ from the data's."""


class WeightsUnavailableError(ICDistillError):
    """Pretrained weights were asked for but cannot be loaded (no download possible, bad file)."""


class TrainingDivergedError(ICDistillError):
    """A loss became NaN or infinite; the last good checkpoint is left intact."""


class OutputError(ICDistillError):
    """A file of the run cannot be written (disk full, read-only or forbidden folder); the
    message names the path, and the file it would have replaced is left intact."""


class ExportError(ICDistillError):
    """``icdistill export`` cannot write the asked-for format: a family without an ONNX path, the
    ONNX packages missing (``pip install icdistill[export]``), or the exporter failing."""


class UnsafeFileError(DataError):
    """A weights or checkpoint file holds Python objects that only unpickling can rebuild (which
    can run arbitrary code); refused unless the user opts in (``--allow-unsafe-pickle``,
    ``model.allow_unsafe_pickle`` / ``teacher.allow_unsafe_pickle``)."""
