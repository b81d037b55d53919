"""icdistill: Instance-Conditional Knowledge Distillation for torchvision detectors."""

__version__ = "0.1.0"

# The Python API (icdistill/api.py), imported on first use (PEP 562) so that `import icdistill`
# stays light: torch and the rest load only when a function is called for.
_API = ("train", "evaluate", "Result")


def __getattr__(name: str):
    if name in _API:
        from icdistill import api

        return getattr(api, name)
    if name == "distill":  # the subpackage, which is callable: icdistill.distill(...) is api.distill
        import importlib

        return importlib.import_module("icdistill.distill")
    raise AttributeError(f"module 'icdistill' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API, "distill"])
