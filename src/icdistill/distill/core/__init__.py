"""The method slot: what every distillation method fills (:mod:`.method`), what it is given
(:mod:`.inputs`, :mod:`.context`), the registry of methods (:mod:`.registry`) and the trainable
whole of student + method (:mod:`.distiller`). Nothing here names a method."""
