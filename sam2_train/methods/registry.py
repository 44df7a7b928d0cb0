"""The registry of methods: ``-method`` name x student kind x script -> the :class:`~sam2_train.methods.base.Method`
class that trains it. A method registers itself with :func:`register` (built-in ones when
:mod:`sam2_train.methods` is imported; a user's own wherever it is defined), and nothing else in the project
needs to know it: its flags come from its ``Conf`` fields (``cfg.py``), its config round-trips through
:class:`sam2_train.engine.config.TrainConfig`."""
from __future__ import annotations

from sam2_train.engine.errors import UserError

__all__ = ["register", "method_class", "method_names", "registered"]

_REGISTRY: dict[tuple[str, str, str], type] = {}


def register(cls: type) -> type:
    """Class decorator: ``cls`` trains ``-method cls.name`` for each of ``cls.students`` and ``cls.scripts``.
    Registering the same key twice replaces the earlier class (a test may redefine its toy method)."""
    if not getattr(cls, "name", ""):
        raise ValueError(f"{cls.__name__}: a registered method needs a name (its -method value)")
    for student in cls.students:
        for script in cls.scripts:
            _REGISTRY[(cls.name, student, script)] = cls
    return cls


def _builtin() -> None:
    import sam2_train.methods  # noqa: F401  (registers the built-in methods)


def registered() -> list[type]:
    """Every registered method class (each once)."""
    _builtin()
    return list(dict.fromkeys(_REGISTRY.values()))


def method_names() -> tuple[str, ...]:
    _builtin()
    return tuple(dict.fromkeys(name for name, _, _ in _REGISTRY))


def method_class(name: str, student: str, script: str) -> type:
    """The class of ``-method name`` for ``-student student`` in ``train_<script>.py``; a one-line
    :class:`UserError` saying what fits when there is none."""
    _builtin()
    if (name, student, script) in _REGISTRY:
        return _REGISTRY[(name, student, script)]
    same = [(s, sc) for (n, s, sc) in _REGISTRY if n == name]
    if not same:
        raise UserError(f"-method {name}: unknown method (known: {', '.join(method_names())})")
    students = list(dict.fromkeys(s for s, _ in same))
    if student not in students:
        raise UserError(f"-method {name} trains -student {' or '.join(students)}, not -student {student}: add "
                        f"-student {students[0]}")
    scripts = [sc for s, sc in same if s == student]
    raise UserError(f"-method {name} with -student {student} runs in train_{scripts[0]}.py only: use "
                    f"train_{scripts[0]}.py")
