"""Only an actor class's public methods reach Ray.

Ray exposes every method of an actor class as an actor task, underscores included, and any Ray
worker (an executor too) can look a named actor up and call it. A verifier's private methods
(``_store``, ``_adopt_view``, ``_deliver`` ...) take no capability, because only the actor
itself was meant to call them: called from outside, they would let a worker rewrite
certificates, quarantine honest executors, or hand out results. :func:`public_actor` builds the
class that is given to ``ray.remote``: it holds an instance of the real class and forwards only
the public methods, so a private name is an ``AttributeError`` on the handle.

Example:
    >>> class Core:
    ...     def ping(self):
    ...         return self._pong()
    ...     def _pong(self):
    ...         return "pong"
    >>> Facade = public_actor(Core)
    >>> Facade().ping(), hasattr(Facade, "_pong")
    ('pong', False)
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

__all__ = ["public_actor"]


@functools.cache
def public_actor(core: type) -> type:
    """The class to pass to ``ray.remote`` for ``core``: ``core``'s public methods only.

    Coroutine methods stay coroutines (Ray then runs the actor as an async actor), signatures
    and Ray method options (``@ray.method``) are kept, and the class keeps ``core``'s name, so
    Ray's state API and dashboards show it as before.
    """
    namespace: dict[str, Any] = {"__init__": _init(core), "__doc__": core.__doc__}
    for name, fn in inspect.getmembers(core, inspect.isfunction):
        if name.startswith("_"):
            continue
        namespace[name] = _forward(name, fn)
    facade = type(core.__name__, (), namespace)
    # A name that does not resolve back to ``core``: cloudpickle must ship this class, not look
    # ``core`` up by module and name on the worker (which would expose its private methods).
    facade.__qualname__ = f"public_actor.<{core.__qualname__}>"
    facade.__module__ = __name__
    return facade


def _init(core: type) -> Any:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        self._core = core(*args, **kwargs)

    functools.update_wrapper(__init__, core.__init__, updated=())
    return __init__


def _forward(name: str, fn: Any) -> Any:
    if inspect.iscoroutinefunction(fn):

        async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            return await getattr(self._core, name)(*args, **kwargs)

    else:

        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            return getattr(self._core, name)(*args, **kwargs)

    # The signature (Ray validates arguments against it) and any ``__ray_*__`` options.
    functools.update_wrapper(method, fn, updated=())
    for attr in dir(fn):
        if attr.startswith("__ray_"):
            setattr(method, attr, getattr(fn, attr))
    return method
