"""The comparison methods, one module each (class, config section ``distill.<name>``, builder,
per-family defaults, what it needs from a detector), each registering itself with
:func:`icdistill.distill.core.registry.register_method`. The registry imports every module
here whose name does not start with ``_`` (those hold shared parts): adding a method is adding
one module, with no list to edit."""
