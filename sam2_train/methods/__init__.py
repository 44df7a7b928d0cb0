"""The training methods, one class per method and student kind (:mod:`sam2_train.methods.registry`):

* ``sss_2d`` / ``sss_3d``: ``-method supervised | fixmatch | sss`` of the SAM-2 student, on slices / volumes
  (the step they share: :mod:`sam2_train.methods.weak_to_strong`);
* ``unet/``: the lightweight students' ``supervised``, ``mean_teacher``, ``fixmatch`` and the SAM-guided
  ``km_onetime``, ``km_continuous``, ``semisam``, ``sammatch``.

A method of your own is a :class:`~sam2_train.methods.base.Method` subclass decorated with
:func:`~sam2_train.methods.registry.register`; its ``Conf`` fields become flags.
"""
from sam2_train.methods import sss_2d, sss_3d, unet  # noqa: F401  (registers the built-in methods)
from sam2_train.methods.base import Method
from sam2_train.methods.registry import method_class, method_names, register

__all__ = ["Method", "method_class", "method_names", "register"]
