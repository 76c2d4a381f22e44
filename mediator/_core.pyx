# cython: language_level=3, binding=False, embedsignature=True
"""Compiled dispatch engine: the twin of ``_core_py.py``, same names, same behaviour.

Call plans are decided at registration; a dispatch is a dict lookup, a C-level branch
on the plan and one vectorcall of the handler, whose own coroutine is returned.
"""

cimport cython
from cpython.contextvars cimport PyContext_CopyCurrent, PyContext_Enter, PyContext_Exit
from cpython.exc cimport PyErr_Occurred
from cpython.ref cimport PyObject, Py_XDECREF
from cpython.unicode cimport PyUnicode_GET_LENGTH

import asyncio
import logging
from collections.abc import Mapping

from mediator import _signatures
from mediator._compat import add_note, resume_in_task
from mediator._safe import HandlerIdentity, SafeRepr, safe_repr
from mediator.errors import handler_errors

__all__ = [
    "ActionSubject",
    "ActionResult",
    "Invoker",
    "Route",
    "PipelineRoute",
    "RequestDispatcher",
    "EventDispatcher",
    "log_handler_error",
]

cdef extern from *:
    """
    /* One step of a coroutine: 0 = it returned (*result = value), 1 = it yielded
       (*result = the yielded value), -1 = it raised. No StopIteration is created
       for a return on 3.10+, where PyIter_Send exists. */
    #if PY_VERSION_HEX >= 0x030A0000
    static int mediator_step(PyObject *coro, PyObject **result) {
        PySendResult status = PyIter_Send(coro, Py_None, result);
        if (status == PYGEN_RETURN) return 0;
        if (status == PYGEN_NEXT) return 1;
        return -1;
    }
    #else
    static int mediator_step(PyObject *coro, PyObject **result) {
        PyObject *yielded = PyObject_CallMethod(coro, "send", "O", Py_None);
        if (yielded != NULL) { *result = yielded; return 1; }
        if (PyErr_ExceptionMatches(PyExc_StopIteration)
                && _PyGen_FetchStopIterationValue(result) == 0) {
            return 0;
        }
        *result = NULL;
        return -1;
    }
    #endif
    """
    int mediator_step(object coro, PyObject **result) except -1

cdef extern from *:
    """
    static inline PyObject *mediator_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
        /* a Python function (the usual handler or layer) has its slot read in place */
        vectorcallfunc call = Py_IS_TYPE(callable, &PyFunction_Type)
            ? ((PyFunctionObject *)callable)->vectorcall : PyVectorcall_Function(callable);
        if (call != NULL) return call(callable, args, nargsf, kwnames);
        return PyObject_Vectorcall(callable, args, nargsf, kwnames);
    }
    /* A new reference the caller already owns, handed to Cython as an object. */
    static PyObject *mediator_own(PyObject *o) { return o; }
    /* Whether the caller's reference is the only one (the engine then reuses the object).
       The objects asked about are held by a relay, never by a frame's stack, so CPython
       3.14's borrowed stack references cannot hide behind a count of 1; from 3.14 on the
       public PyUnstable_Object_IsUniquelyReferenced says it, correct on free-threading
       builds too, where Py_REFCNT alone is not. */
    #if PY_VERSION_HEX >= 0x030E0000
    #define mediator_sole_reference(o) PyUnstable_Object_IsUniquelyReferenced(o)
    #else
    #define mediator_sole_reference(o) (Py_REFCNT(o) == 1)
    #endif
    /* Raise the error that is already set (Cython sees NULL and unwinds). */
    static PyObject *raise_pending(void) { return NULL; }
    """
    object mediator_own(PyObject *o)
    bint mediator_sole_reference(object o)
    object raise_pending()

cdef extern from *:
    void PyErr_Restore(PyObject *type, PyObject *value, PyObject *traceback)
    void Py_INCREF(object o)
    object PyObject_Vectorcall(object callable, PyObject **args, size_t nargsf, PyObject *kwnames)
    # The same call through the callable's own vectorcall slot, its result unchecked:
    # NULL (with the error set) is the caller's to handle.
    PyObject *mediator_vectorcall(object callable, PyObject **args, size_t nargsf, PyObject *kwnames)
    PyObject *PyDict_GetItemWithError(object dict, object key)  # borrowed
    PyObject *Py_TYPE(PyObject *o)
    PyObject *PyList_GET_ITEM(list items, Py_ssize_t index)
    Py_ssize_t PyTuple_GET_SIZE(PyObject *tuple)
    PyObject *PyTuple_GET_ITEM(PyObject *tuple, Py_ssize_t index)

cdef extern from "_relay.h":
    ctypedef object (*mediator_relay_fn)(object owner, object subject, object value)
    ctypedef object (*mediator_start_fn)(object owner, object subject, object argument, int *finished)
    object mediator_relay(object inner, object owner, object subject, mediator_relay_fn on_return, mediator_relay_fn on_error)
    object mediator_deferred(
        mediator_start_fn start, object owner, object subject, object argument,
        mediator_relay_fn on_return, mediator_relay_fn on_error, const char *what
    )
    object mediator_relay_named(
        object inner, object owner, object subject, mediator_relay_fn on_return, mediator_relay_fn on_error,
        const char *what
    )
    int mediator_relay_ready() except -1
    bint mediator_is_awaitable(object o)

cdef extern from *:
    """
    /* mediator_step, counted against the recursion limit when it steps a relay: a handler
       returning another dispatch nests relays in C with no Python frame between them
       (see RELAY_RECURSION_WHERE in _relay.h). */
    static int mediator_step_nested(PyObject *coro, PyObject **result) {
        int status;
        if (!RELAY_CHECK(coro)) return mediator_step(coro, result);
        if (Py_EnterRecursiveCall(RELAY_RECURSION_WHERE)) {
            *result = NULL;
            return -1;
        }
        status = mediator_step(coro, result);
        Py_LeaveRecursiveCall();
        return status;
    }

    /* hook(subject, error) called as in the `except` block of a hand-written `try`: with
       `error` as the exception being handled, so that what it raises has `error` as its
       __context__ (and not whatever the awaiting code happens to be handling). */
    static PyObject *mediator_call_handling(PyObject *hook, PyObject *subject, PyObject *error) {
        PyObject *args[2] = {subject, error};
        PyObject *result;
        _PyErr_StackItem *item = PyThreadState_Get()->exc_info;
    #if PY_VERSION_HEX >= 0x030B0000
        PyObject *saved = item->exc_value;
        Py_INCREF(error);
        item->exc_value = error;
        result = PyObject_Vectorcall(hook, args, 2, NULL);
        item = PyThreadState_Get()->exc_info;
        Py_XSETREF(item->exc_value, saved);
    #else
        PyObject *saved_type = item->exc_type, *saved_value = item->exc_value, *saved_tb = item->exc_traceback;
        item->exc_type = (PyObject *)Py_TYPE(error);
        Py_INCREF(item->exc_type);
        Py_INCREF(error);
        item->exc_value = error;
        item->exc_traceback = PyException_GetTraceback(error);
        result = PyObject_Vectorcall(hook, args, 2, NULL);
        item = PyThreadState_Get()->exc_info;
        Py_XSETREF(item->exc_type, saved_type);
        Py_XSETREF(item->exc_value, saved_value);
        Py_XSETREF(item->exc_traceback, saved_tb);
    #endif
        return result;
    }

    /* Raise `error` again as it is, as a bare `raise` would: unlike `raise error` (which
       PyErr_SetObject does), its __context__ is left alone. NULL, for Cython to unwind. */
    static PyObject *mediator_reraise(PyObject *error) {
        Py_INCREF(error);
        relay_restore_error(error);
        return NULL;
    }
    """
    int mediator_step_nested(object coro, PyObject **result) except -1
    object mediator_call_handling(object hook, object subject, object error)
    object mediator_reraise(object error)

cdef extern from "_method.h":
    int mediator_install_method(object owner, void *fn, object signature) except -1
    int mediator_method_ready() except -1

cdef extern from "_call.h":
    ctypedef object (*mediator_call_fn)(object owner, object arg)
    object mediator_call_new(object owner, mediator_call_fn fn, const char *name)
    int mediator_call_ready() except -1

mediator_relay_ready()
mediator_call_ready()
mediator_method_ready()

logger = logging.getLogger("mediator")

# How an Invoker treats injected keyword arguments.
cdef enum:
    _DROP = 0
    _FILTER = 1
    _RENAME_FILTER = 2
    _ALL = 3


@cython.freelist(16)
cdef class ActionSubject:
    """An action on its way through a modifier stack: the subject and injected kwargs."""

    cdef public object subject
    cdef object _inject
    cdef bint _unmade  # made by the engine with nothing to inject: ``inject`` makes its dict when read

    def __init__(self, subject, inject):
        self.subject = subject
        self._inject = inject
        self._unmade = False

    @property
    def inject(self):
        """The keyword arguments injected into the handler (layers may change them)."""
        if self._unmade:
            self._inject = {}
            self._unmade = False
        return self._inject

    @inject.setter
    def inject(self, value):
        self._inject = value
        self._unmade = False

    @property
    def key(self):
        """The handler key of this action: ``type(subject)``."""
        return type(self.subject)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return (self.subject, self.inject) == (other.subject, other.inject)

    __hash__ = None

    def __repr__(self):
        return f"ActionSubject(subject={self.subject!r}, inject={self.inject!r})"


@cython.freelist(16)
cdef class ActionResult:
    """The value a handler returned, as it travels back out of a modifier stack."""

    cdef public object result

    def __init__(self, result):
        self.result = result

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self.result == other.result

    __hash__ = None

    def __repr__(self):
        return f"ActionResult(result={self.result!r})"


@cython.final
cdef class Invoker:
    """A handler's call plan, compiled once at registration.

    ``invoker(subject, inject)`` calls ``fn`` and returns its awaitable untouched:
    the subject goes positionally or by ``subject_name``; injected kwargs are
    dropped, filtered to ``allow_args``, renamed through ``arg_map``, or passed whole
    (``allow_args=None``).
    """

    cdef readonly object fn
    cdef readonly object subject_name
    cdef readonly object subject_param
    cdef readonly str kind
    cdef int _kind  # _ASYNC, _SYNC or _STREAM
    cdef int _mode
    cdef frozenset _names
    cdef dict _renames
    cdef tuple _pairs
    cdef bytes _name  # what the warning of an action never awaited calls it

    def __init__(self, fn, subject_name=None, arg_map=None, allow_args=None, subject_param=None, kind="async"):
        if kind not in _KINDS:
            raise ValueError(f"Invoker kind must be one of {', '.join(_KINDS)}, got {safe_repr(kind)}")
        self.fn = fn
        self._name = _name_of(fn)
        self.kind = kind
        self._kind = _KINDS.index(kind)
        self.subject_name = subject_name or None
        # The subject's parameter is filled by the subject, never by injection.
        self.subject_param = subject_param or self.subject_name
        self._renames = dict(arg_map or {})
        self._names = frozenset()
        self._pairs = ()
        if allow_args is None:
            self._mode = _ALL
            return
        self._names = frozenset(allow_args) - {self.subject_param}
        if not self._names:
            self._mode = _DROP
        elif self._renames:
            self._mode = _RENAME_FILTER
            self._pairs = _rename_pairs(self._renames, self._names)
        else:
            self._mode = _FILTER

    def __call__(self, subject, dict inject):
        return self.call(subject, inject)

    cdef object call(self, object subject, dict inject):
        result = self._call(subject, inject)
        if self._kind == _ASYNC:
            return result
        if self._kind == _SYNC and _is_awaitable(result):
            return result if _is_coroutine(result) else _awaited(result)
        return _value(result)  # a plain value, or a stream's async generator

    cdef object _call(self, object subject, dict inject):
        cdef dict kwargs = None
        cdef object name
        if self._mode == _DROP or not inject:
            pass
        elif self._mode == _FILTER:
            kwargs = inject
            for name in inject:
                if name not in self._names:
                    kwargs = {k: v for k, v in inject.items() if k in self._names}
                    break
        elif self._mode == _RENAME_FILTER:
            kwargs = {}
            for name, param in self._pairs:
                if name in inject:
                    kwargs[param] = inject[name]
        else:
            if self._renames:
                kwargs = {self._renames.get(k, k): v for k, v in inject.items()}
            else:
                kwargs = inject
            if self.subject_param in kwargs:
                kwargs = {k: v for k, v in kwargs.items() if k != self.subject_param}
        if self.subject_name is None:
            if kwargs:
                return self.fn(subject, **kwargs)
            return self.fn(subject)
        if kwargs:
            kwargs = dict(kwargs)
            kwargs[self.subject_name] = subject
            return self.fn(**kwargs)
        return self.fn(**{self.subject_name: subject})

    @cython.always_allow_keywords(False)
    def action(self, action):
        """Call through the modifier interface: ``ActionSubject`` in, ``ActionResult`` out.

        Nothing runs until it is awaited, as for an ``async def`` (a plain ``def`` handler
        included): the call is the start of a deferred relay.
        """
        if not isinstance(action, ActionSubject):
            return mediator_deferred(_raise_start, self, _not_an_action(self.fn, action), None, NULL, NULL, self._name)
        return mediator_deferred(_invoker_action_start, self, action, None, _action_result, NULL, self._name)


cdef object _invoker_action_start(object owner, object action, object argument, int *finished):
    """``Invoker.action``'s body, run when first awaited: the handler's call."""
    cdef Invoker invoker = <Invoker>owner
    return invoker.call((<ActionSubject>action).subject, _action_inject(<ActionSubject>action, invoker.fn))


cdef object _action_inject(ActionSubject action, handler):
    """The keyword arguments a modifier stack hands its handler: ``action.inject`` as a
    dict. A layer may set any mapping (it is copied, as ``**`` would) or None (nothing)."""
    inject = action.inject
    if type(inject) is dict:
        return inject
    if inject is None:
        return {}
    if isinstance(inject, Mapping):
        return dict(inject)
    raise TypeError(
        f"a modifier of {handler!r} set ActionSubject.inject to a {type(inject).__name__}: "
        f"it must be a mapping of keyword arguments"
    )


def _name_of(fn):
    """What a warning calls a dispatch of ``fn``: its qualified name, as UTF-8."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return str(name).encode("utf-8", "replace")


_KINDS = ("async", "sync", "stream")
cdef enum:
    _ASYNC = 0
    _SYNC = 1
    _STREAM = 2


cdef inline bint _is_awaitable(value):
    """Whether a sync handler returned an awaitable (a decorated async function, say)."""
    return hasattr(type(value), "__await__")


cdef inline bint _is_coroutine(value):
    return asyncio.iscoroutine(value)


async def _value(value):
    return value


async def _awaited(awaitable):
    return await awaitable


def _rename_pairs(dict renames, frozenset names):
    """(injected name, parameter name) for every injected name that reaches a parameter."""
    pairs = [(name, name) for name in sorted(names) if name not in renames]
    pairs += [(src, dst) for src, dst in renames.items() if dst in names]
    return tuple(pairs)


cdef class _BaseRoute:
    """What the dispatchers call: ``invoke(subject, inject)`` -> awaitable result.

    ``_direct`` is the handler function when ``_direct(subject)`` is the whole call
    for an empty ``inject`` (or any ``inject``, if ``_ignores_inject``): the
    dispatchers then skip the plan altogether.
    """

    cdef readonly object handler
    cdef object _direct
    cdef bytes _name  # what the warning of a dispatch never awaited calls it: the handler
    cdef bint _ignores_inject
    cdef frozenset _kw_names  # injected names _direct takes as they are (None: see _kw_all)
    cdef bint _kw_all  # _direct takes any injected name as it is, but _kw_exclude
    cdef object _kw_exclude
    cdef readonly bint _inline  # a sync handler: an event bus runs it in place, without a task
    cdef readonly bint _stream  # an async generator: answers bus.stream(), not execute()

    cdef bint _takes_as_is(self, PyObject *kwnames):
        """Whether ``_direct(subject, **kwargs)`` with these names is the whole call."""
        cdef Py_ssize_t index
        cdef object exclude
        if self._kw_all:
            exclude = self._kw_exclude
            for index in range(PyTuple_GET_SIZE(kwnames)):
                if <object>PyTuple_GET_ITEM(kwnames, index) == exclude:
                    return False
            return True
        if self._kw_names is None:
            return False
        for index in range(PyTuple_GET_SIZE(kwnames)):
            if <object>PyTuple_GET_ITEM(kwnames, index) not in self._kw_names:
                return False
        return True

    cdef object _invoke(self, object subject, dict inject):
        raise NotImplementedError

    def invoke(self, subject, dict inject):
        """Start the handler; returns an awaitable of its result."""
        return self._invoke(subject, inject)


@cython.final
cdef class Route(_BaseRoute):
    """A registered handler ready to dispatch: its invoker inside synchronous hooks.

    Hook layers are given outermost first as three aligned tuples (``None`` where a
    layer has no such stage). Befores run in order, then the handler; afters (which
    may replace the result) and error hooks unwind in reverse, exactly as nested
    ``try`` blocks would, but as one C loop with no coroutine per layer. A hooked route
    starts when it is first awaited, as an ``async def`` would: its hooks run in the
    awaiting task's context, not in the caller's.
    """

    cdef readonly Invoker invoker
    cdef tuple _befores
    cdef tuple _afters
    cdef tuple _errors
    cdef bint _wraps

    def __init__(self, handler, Invoker invoker, tuple befores=(), tuple afters=(), tuple errors=()):
        self.handler = handler
        self.invoker = invoker
        self._befores = self._afters = self._errors = ()
        if befores or afters or errors:
            if len({len(stage) for stage in (befores, afters, errors) if stage}) > 1:
                raise ValueError("hook stages must be aligned: one entry per layer in each")
            self._befores = befores if any(befores) else ()
            self._afters = afters
            self._errors = errors
            self._wraps = any(afters) or any(errors)
        self._name = invoker._name
        self._inline = invoker._kind == _SYNC
        self._stream = invoker._kind == _STREAM
        if not self._befores and not self._wraps and invoker.subject_name is None and invoker._kind == _ASYNC:
            self._direct = invoker.fn
            self._ignores_inject = invoker._mode == _DROP
            if invoker._mode == _FILTER:
                self._kw_names = invoker._names
            self._kw_all = invoker._mode == _ALL and not invoker._renames
            self._kw_exclude = invoker.subject_param

    cdef object _invoke(self, object subject, dict inject):
        if self._wraps:
            return mediator_deferred(_hooks_start, self, subject, inject, _hooks_returned, _hooks_failed, self._name)
        if self._befores:
            return mediator_deferred(_hooks_start, self, subject, inject, NULL, NULL, self._name)
        return self.invoker.call(subject, inject)

    @property
    def action(self):
        """This route as the innermost call of a modifier stack: ``action(ActionSubject)``
        returns an awaitable of the handler's ``ActionResult``."""
        return mediator_call_new(self, _route_action, b"the innermost call of a modifier stack")

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int _enter(self, object subject, dict inject) except -1:
        cdef Py_ssize_t depth = 0
        cdef Py_ssize_t count = len(self._befores)
        try:
            while depth < count:
                before = self._befores[depth]
                if before is not None:
                    before(subject, inject)
                depth += 1
        except Exception as error:
            self._unwind(depth, subject, None, error)
        return 0

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef object _unwind(self, Py_ssize_t depth, object subject, object result, object error):
        """Run after/error stages of layers ``depth-1 .. 0``; return or raise the outcome."""
        while depth > 0:
            try:
                while depth > 0:
                    depth -= 1
                    if error is None:
                        hook = self._afters[depth]
                        if hook is not None:
                            result = hook(subject, result)
                    else:
                        hook = self._errors[depth]
                        if hook is not None:
                            mediator_call_handling(hook, subject, error)
            except Exception as raised:
                if raised is not error and raised.__context__ is None:
                    raised.__context__ = error
                error = raised
        if error is not None:
            return mediator_reraise(error)  # its chain as the hooks left it
        return result


@cython.final
cdef class PipelineRoute(_BaseRoute):
    """A registered handler behind a ``ModifierFactory`` stack (the general path)."""

    cdef readonly object pipeline

    def __init__(self, handler, pipeline):
        self.handler = handler
        self.pipeline = pipeline
        self._name = _name_of(getattr(handler, "fn", handler))
        self._stream = getattr(handler, "kind", None) == "stream"
        self._inline = getattr(handler, "kind", None) == "sync"

    cdef object _invoke(self, object subject, dict inject):
        """A failure of the stack's call is raised where the result is awaited, not here.
        Dropped unawaited, the dispatch warns naming the handler (not the outermost layer)."""
        global _spare_action
        cdef ActionSubject action = _spare_action
        cdef PyObject *started
        cdef PyObject *argument
        if action is not None:
            _spare_action = None
        else:
            action = ActionSubject.__new__(ActionSubject)
        argument = <PyObject *>action
        action.subject = subject
        action._inject = inject
        action._unmade = inject is None
        started = mediator_vectorcall(self.pipeline, &argument, 1, NULL)
        if started == NULL:
            return _raise_pending(self)
        awaitable = mediator_own(started)
        if not mediator_is_awaitable(awaitable):
            return _raise(_not_awaitable(self, awaitable), self)
        return mediator_relay_named(awaitable, self, action, _unwrap_result, NULL, self._name)


cdef object _route_action(object owner, object argument):
    """``Route.action``'s call (see _call.h): the handler, its value as an ``ActionResult``."""
    cdef Route route = <Route>owner
    cdef ActionSubject action
    cdef PyObject *awaitable
    cdef PyObject *subject  # borrowed: the action holds it
    if not isinstance(argument, ActionSubject):
        return _raise(_not_an_action(route.handler, argument), route)
    action = <ActionSubject>argument
    if route._direct is not None and (
        action._unmade or route._ignores_inject or action._inject is None
        or (type(action._inject) is dict and not action._inject)
    ):
        subject = <PyObject *>action.subject
        awaitable = mediator_vectorcall(route._direct, &subject, 1, NULL)
        if awaitable == NULL:
            return _raise_pending(route)
        return mediator_relay(mediator_own(awaitable), None, None, _action_result, NULL)
    return _route_action_planned(route, action)


cdef object _route_action_planned(Route route, ActionSubject action):
    """``_route_action`` through the route's plan (its hooks, or what it injects), which
    starts when it is first awaited, as an ``async def`` would: a plain ``def`` handler
    behind a layer that returns this without awaiting it runs at await time."""
    return mediator_deferred(_route_action_start, route, action, None, _action_result, NULL, route._name)


cdef object _route_action_start(object owner, object action, object argument, int *finished):
    """``_route_action_planned``'s body, run when first awaited: the route's call."""
    cdef Route route = <Route>owner
    return route._invoke((<ActionSubject>action).subject, _action_inject(<ActionSubject>action, route.handler))


# One spare ActionSubject and ActionResult: a dispatch through a modifier stack that ends
# holding the only reference to its own action and result keeps them for the next one,
# which then skips their allocation, set-up and GC tracking (as CPython's zip() reuses
# its result tuple). Only an object nothing else refers to is kept, so none is observed.
cdef ActionSubject _spare_action = None
cdef ActionResult _spare_result = None


# Relay endings (see _relay.h): what a wrapper coroutine would do after its await.

cdef object _action_result(object owner, object subject, object value):
    """The innermost call of a modifier stack: the handler's value as an ``ActionResult``."""
    global _spare_result
    cdef ActionResult result = _spare_result
    if result is not None:
        _spare_result = None
    else:
        result = ActionResult.__new__(ActionResult)
    result.result = value
    return result


cdef object _unwrap_result(object route, object action, object result):
    """The outermost layer of a modifier stack returned: its ``ActionResult``'s value.

    ``action`` is the stack's ``ActionSubject``; the relay calling this holds one reference
    to it and one to ``result``.
    """
    global _spare_action, _spare_result
    if not isinstance(result, ActionResult):
        raise TypeError(
            f"the modifier stack of {safe_repr((<PipelineRoute>route).handler)} returned {safe_repr(result)}: "
            f"a modifier must return an ActionResult"
        )
    value = (<ActionResult>result).result
    if _spare_result is None and type(result) is ActionResult and mediator_sole_reference(result):
        (<ActionResult>result).result = None  # ``value`` still holds it: nothing is freed here
        _spare_result = <ActionResult>result
    if _spare_action is None and mediator_sole_reference(action):
        (<ActionSubject>action).subject = None
        (<ActionSubject>action)._inject = None
        if _spare_action is None:  # freeing the subject may have run code that dispatched
            _spare_action = <ActionSubject>action
    return value


def _not_an_action(handler, given):
    return TypeError(
        f"the innermost call of the modifier stack of {safe_repr(handler)} takes an ActionSubject, "
        f"not {safe_repr(given)}"
    )


def _not_awaitable(route, returned):
    return TypeError(
        f"the modifier stack of {safe_repr(route.handler)} returned {safe_repr(returned)}: "
        f"a modifier layer must return an awaitable of an ActionResult (is it an async def?)"
    )


cdef object _hooks_start(object owner, object subject, object argument, int *finished):
    """A hooked route's first step, when it is first awaited: the befores, then the
    handler's call, whose awaitable the relay drives from there. A failure here has met
    the error stages of the layers it reached (_enter, _unwind) and is raised as it is."""
    cdef Route route = <Route>owner
    cdef dict inject = <dict>argument
    if route._befores:
        if inject is None:  # befores may add to it for the handler
            inject = {}
        route._enter(subject, inject)
    if not route._wraps:
        return route.invoker.call(subject, inject)
    try:
        return route.invoker.call(subject, inject)
    except Exception as error:  # e.g. it binds badly: the hooks that ran see it
        return route._unwind(len(route._errors), subject, None, error)


cdef object _hooks_returned(object route, object subject, object value):
    """The handler returned: the hooks' after stages, innermost first."""
    return (<Route>route)._unwind(len((<Route>route)._afters), subject, value, None)


cdef object _hooks_failed(object route, object subject, object error):
    """The handler raised an ``Exception``: the hooks' error stages, innermost first."""
    return (<Route>route)._unwind(len((<Route>route)._errors), subject, None, error)


cdef object _raise(error, object route=None):
    """A dispatch that can only fail: ``error`` is raised where it is awaited. Dropped
    unawaited, it warns as a coroutine would, naming the handler of ``route`` (a
    ``_BaseRoute``), or the dispatch when there is none."""
    if route is None:
        return mediator_deferred(_raise_start, None, error, None, NULL, NULL, b"RequestDispatcher.execute")
    return mediator_deferred(_raise_start, route, error, None, NULL, NULL, (<_BaseRoute>route)._name)


cdef object _raise_start(object owner, object error, object argument, int *finished):
    if isinstance(error, StopIteration):  # as PEP 479 words it for a coroutine (Cython: 'generator')
        replaced = RuntimeError("coroutine raised StopIteration")
        replaced.__cause__ = error
        replaced.__context__ = error
        # set as it is, no chaining (as PEP 479's replacement; no try block here either: a
        # try's exception save is inlined in _publish_start's loop only while it has few users)
        cls = type(replaced)
        Py_INCREF(cls)  # references PyErr_Restore takes over
        Py_INCREF(replaced)
        PyErr_Restore(<PyObject *>cls, <PyObject *>replaced, NULL)
        return raise_pending()
    raise error


def _stream_misuse(route, obj):
    return TypeError(f"{safe_repr(route.handler)} answers {type(obj).__name__} with a stream: use bus.stream(request)")


@cython.final
cdef class _ClassTable:
    """A copy of a ``{class: route}`` dict that a dispatch reads in a few C steps.

    Classes compare by identity (unless a metaclass redefines ``==``, which turns the
    table off: ``usable`` is false and the dict is read instead), so the lookup is
    open addressing on the class's address, with none of a dict's generic path.
    """

    cdef list _slots  # key, value, key, value, ...: 2 * capacity items, None where empty
    cdef size_t _mask  # capacity - 1 (a power of two)
    cdef Py_ssize_t _used
    cdef readonly bint usable

    def __cinit__(self):
        self.clear()

    def clear(self):
        self._slots = [None] * 16
        self._mask = 7
        self._used = 0
        self.usable = True

    cdef inline PyObject *get(self, PyObject *key) noexcept:
        """The value stored for ``key`` (borrowed), or NULL."""
        cdef size_t index = ((<size_t>key) >> 4) & self._mask
        cdef PyObject *found
        while True:
            found = PyList_GET_ITEM(self._slots, 2 * index)
            if found == key:
                return PyList_GET_ITEM(self._slots, 2 * index + 1)
            if found == <PyObject *>None:
                return NULL
            index = (index + 1) & self._mask

    def set(self, key, value):
        cdef size_t index
        if not self.usable:
            return
        if type(key).__eq__ is not type.__eq__ or type(key).__hash__ is not type.__hash__:
            self.usable = False
            return
        if 2 * (self._used + 1) > self._mask + 1:
            self._grow()
        index = ((<size_t><PyObject *>key) >> 4) & self._mask
        while self._slots[2 * index] is not None and self._slots[2 * index] is not key:
            index = (index + 1) & self._mask
        if self._slots[2 * index] is None:
            self._used += 1
        self._slots[2 * index] = key
        self._slots[2 * index + 1] = value

    def _grow(self):
        old = self._slots
        self._slots = [None] * (4 * (self._mask + 1))
        self._mask = 2 * self._mask + 1
        self._used = 0
        for position in range(0, len(old), 2):
            if old[position] is not None:
                self.set(old[position], old[position + 1])


cdef class RequestDispatcher:
    """Engine base of ``LocalRequestBus``: one route per request class.

    ``_routes`` is the lookup table (``_table`` mirrors it for the dispatch). With
    ``polymorphic`` it is a cache over ``_registered``: a class resolves, on first
    sight, to the route of the nearest class in its MRO; a registration clears the cache.
    """

    cdef readonly dict _routes
    cdef readonly dict _registered
    cdef readonly bint _polymorphic
    cdef _ClassTable _table

    def __cinit__(self, *args, **kwargs):
        self._routes = {}
        self._registered = self._routes
        self._table = _ClassTable()

    def __init__(self, polymorphic=False):
        self._polymorphic = bool(polymorphic)
        self._registered = {} if polymorphic else self._routes

    def _route_set(self, key, _BaseRoute route):
        self._registered[key] = route
        if self._polymorphic:
            self._routes.clear()
            self._table.clear()
        else:
            self._table.set(key, route)

    def _resolve(self, cls):
        """The route of the nearest class in ``cls.__mro__`` (cached), or ``None``."""
        for base in cls.__mro__:
            route = self._registered.get(base)
            if route is not None:
                self._routes[cls] = route
                self._table.set(cls, route)
                return route
        return None

    def _missing(self, obj):
        return LookupError(f"no handler for {safe_repr(type(obj))}")


cdef dict _kwargs(PyObject **values, PyObject *kwnames):
    """The keyword arguments of a vectorcall as a dict."""
    cdef Py_ssize_t index
    cdef dict kwargs = {}
    for index in range(PyTuple_GET_SIZE(kwnames)):
        kwargs[<object>PyTuple_GET_ITEM(kwnames, index)] = <object>values[index]
    return kwargs


cdef inline bint _names_obj(PyObject *kwnames) noexcept:
    """Whether a vectorcall's keyword names include ``obj`` (the event or request's own name)."""
    cdef Py_ssize_t index
    cdef PyObject *name
    for index in range(PyTuple_GET_SIZE(kwnames)):
        name = PyTuple_GET_ITEM(kwnames, index)
        # a name of another length is not "obj": the common case, one C comparison
        if PyUnicode_GET_LENGTH(<object>name) == 3 and <object>name == "obj":
            return True
    return False


cdef tuple _bind_arguments(str method, PyObject **args, Py_ssize_t nargs, PyObject *kwnames):
    """``(obj, inject)`` of a call ``method(obj, **inject)``, bound as Python binds a
    ``def``'s: ``obj`` once, by position or by name."""
    cdef dict inject = {} if kwnames == NULL else _kwargs(args + nargs, kwnames)
    if nargs > 1:
        raise TypeError(f"{method}() takes 1 positional argument but {nargs} were given")
    if nargs == 1:
        if "obj" in inject:
            raise TypeError(f"{method}() got multiple values for argument 'obj'")
        return <object>args[0], inject
    if "obj" not in inject:
        raise TypeError(f"{method}() missing 1 required argument: 'obj'")
    return inject.pop("obj"), inject


cdef object _execute(object self, PyObject **args, Py_ssize_t nargs, PyObject *kwnames):
    """RequestDispatcher.execute(obj, **inject): a METH_FASTCALL|METH_KEYWORDS method.

    When the route's plan allows, the caller's own argument array and keyword names go
    straight to the handler's vectorcall: no dict, no tuple, no wrapper, and no ``try``
    (its cost is paid only when the call fails).
    """
    cdef PyObject *found
    cdef PyObject *awaitable
    cdef _BaseRoute route
    if nargs != 1 or (kwnames != NULL and _names_obj(kwnames)):
        obj, inject = _bind_arguments("execute", args, nargs, kwnames)
        return _execute_bound(<RequestDispatcher>self, obj, inject)
    if (<RequestDispatcher>self)._table.usable:
        found = (<RequestDispatcher>self)._table.get(Py_TYPE(args[0]))
    else:
        found = PyDict_GetItemWithError((<RequestDispatcher>self)._routes, <object>Py_TYPE(args[0]))
    if found == NULL:
        return _execute_unrouted(<RequestDispatcher>self, args, kwnames)
    route = <_BaseRoute>found
    if route._direct is None:
        if kwnames == NULL and type(route) is PipelineRoute and not route._stream:
            return (<PipelineRoute>route)._invoke(<object>args[0], None)
        return _execute_planned(route, args, kwnames)
    if kwnames == NULL or route._ignores_inject:
        awaitable = mediator_vectorcall(route._direct, args, 1, NULL)
    elif route._takes_as_is(kwnames):
        awaitable = mediator_vectorcall(route._direct, args, 1, kwnames)
    else:
        return _execute_planned(route, args, kwnames)
    if awaitable == NULL:
        return _raise_pending(route)
    return mediator_own(awaitable)


cdef object _execute_unrouted(RequestDispatcher self, PyObject **args, PyObject *kwnames):
    """No route in the table for the request's class: resolve it through the MRO, or fail."""
    obj = <object>args[0]
    if PyErr_Occurred():
        raise_pending()  # the dict lookup itself failed
    found = None
    if self._table.usable:
        # The table compares classes by identity: a class equal (and hash-equal) to a
        # registered one through its own metaclass is found by the dict, as in the pure engine.
        try:
            found = self._routes.get(type(obj))
        except Exception as error:  # its __eq__ or __hash__ failed
            return _raise(error)
    if found is None and self._polymorphic:
        found = self._resolve(type(obj))
    if found is None:
        return _raise(self._missing(obj))
    return _execute_planned(<_BaseRoute>found, args, kwnames)


cdef object _execute_bound(RequestDispatcher self, object obj, dict inject):
    """``execute`` given its request by name (``obj=``): the general path."""
    route = self._routes.get(type(obj))
    if route is None:
        route = self._resolve(type(obj)) if self._polymorphic else None
        if route is None:
            return _raise(self._missing(obj))
    return _execute_with(<_BaseRoute>route, obj, inject)


cdef inline object _execute_planned(_BaseRoute route, PyObject **args, PyObject *kwnames):
    """The route's own plan, with the injected kwargs gathered in a dict (and the
    first dispatch of a class that resolved through its MRO)."""
    return _execute_with(route, <object>args[0], None if kwnames == NULL else _kwargs(args + 1, kwnames))


cdef object _execute_with(_BaseRoute route, object obj, dict inject):
    try:
        if route._direct is not None and (not inject or route._ignores_inject):
            return route._direct(obj)
        if route._stream:
            return _raise(_stream_misuse(route, obj), route)
        return route._invoke(obj, inject)
    except Exception as error:  # raise at await time, as an async call would
        return _raise(error, route)


cdef object _raise_pending(object route=None):
    """A call just failed (the error is set): an ``Exception`` is raised at await time."""
    try:
        raise_pending()
    except Exception as error:
        return _raise(error, route)


mediator_install_method(RequestDispatcher, <void *>_execute, _signatures.RequestDispatcher.execute)


# Publish strategies the engine runs itself (see mediator.event.strategies).
cdef enum:
    _BACKGROUND = 0
    _CONCURRENT = 1
    _SEQUENTIAL = 2
    _CUSTOM = 3


cdef class EventDispatcher:
    """Engine base of ``LocalEventBus``: a flat tuple of routes per event class.

    Background runs are supervised here: kept referenced in ``_tasks`` until done,
    their failures sent to ``_on_error``, their count bounded by ``_max_pending``.
    """

    cdef readonly dict _groups  # the lookup table; with _polymorphic, a cache over _registered
    cdef readonly dict _registered
    cdef readonly bint _polymorphic
    cdef readonly dict _tasks
    cdef public int _kind
    cdef public object _strategy  # the strategy object when _kind is _CUSTOM
    cdef public object _on_error
    cdef public Py_ssize_t _max_pending  # 0: unbounded
    cdef public bint _closed
    cdef public object _idle  # a future drain() waits on, resolved when _tasks empties
    cdef list _slot_waiters  # futures of publishes waiting for room under _max_pending
    cdef readonly set _bus_cancelled  # runs the bus itself cancelled (not a failure)

    def __cinit__(self, *args, **kwargs):
        self._groups = {}
        self._registered = self._groups
        self._tasks = {}
        self._slot_waiters = []
        self._bus_cancelled = set()

    def __init__(self, sync_mode=False, polymorphic=False):
        self._kind = _CONCURRENT if sync_mode else _BACKGROUND
        self._polymorphic = bool(polymorphic)
        self._registered = {} if polymorphic else self._groups

    @property
    def sync_mode(self):
        """Whether ``publish`` awaits its handlers (the ``concurrent`` strategy)."""
        return self._kind == _CONCURRENT

    @sync_mode.setter
    def sync_mode(self, value):
        self._kind = _CONCURRENT if value else _BACKGROUND

    def _group_add(self, key, _BaseRoute route):
        self._registered[key] = self._registered.get(key, ()) + (route,)
        if self._polymorphic:
            self._groups.clear()

    def _resolve(self, cls):
        """The routes of every class in ``cls.__mro__``, most specific first.

        A handler already there for a more specific class is not added again for a base.
        """
        routes = []
        seen = set()
        for base in cls.__mro__:
            added = []
            for route in self._registered.get(base, ()):
                identity = HandlerIdentity(route.handler)
                if identity not in seen:
                    added.append(identity)
                    routes.append(route)
            seen.update(added)
        group = self._groups[cls] = tuple(routes)
        return group

    def _start(self, _BaseRoute route, obj, dict inject):
        """Start one handler in its own context: ``None`` if it finished, else its task."""
        return self._start_run(route, obj, inject)

    cdef object _start_run(self, _BaseRoute route, object obj, dict inject):
        cdef PyObject *step_result = NULL
        cdef PyObject *argument = <PyObject *>obj
        cdef PyObject *started
        cdef int status
        # Each handler runs in its own copy of the publisher's context, as a task would.
        context = PyContext_CopyCurrent()
        PyContext_Enter(context)
        try:
            if route._direct is not None and (not inject or route._ignores_inject):
                started = mediator_vectorcall(route._direct, &argument, 1, NULL)
                if started == NULL:
                    raise_pending()
                coroutine = mediator_own(started)
            else:  # its modifiers may change inject: the next handler gets it unchanged
                coroutine = route._invoke(obj, {} if inject is None else dict(inject))
            status = mediator_step_nested(coroutine, &step_result)
        finally:
            PyContext_Exit(context)
        if status == 0:
            Py_XDECREF(step_result)
            return None
        # It suspended: a task carries it on from where it stopped.
        yielded = <object>step_result
        Py_XDECREF(step_result)
        return resume_in_task(coroutine, yielded, context)

    async def _sequential(self, tuple group, obj, dict inject):
        """Each handler in turn, the next once the previous has finished."""
        cdef list errors = None
        for route in group:
            try:
                task = self._start_run(<_BaseRoute>route, obj, inject)
            except (Exception, asyncio.CancelledError) as error:  # a cancellation its own: nothing can cancel a sync step
                errors = _failed(self, errors, error, obj, route)
                continue
            except BaseException:  # SystemExit, KeyboardInterrupt...: the publish ends with it
                _abandon(self, None, obj, errors)
                raise
            if task is not None:
                errors = await _collect(self, [(task, route)], obj, errors)
        return errors

    def _spawn(self, tuple group, obj, dict inject):
        create_task = asyncio.get_running_loop().create_task
        done = self._task_done
        for route in group:
            try:
                if (<_BaseRoute>route)._inline:  # a sync handler runs here; only if it suspends is there a task
                    task = self._start_run(<_BaseRoute>route, obj, inject)
                    if task is None:
                        continue
                elif (<_BaseRoute>route)._direct is not None and (not inject or (<_BaseRoute>route)._ignores_inject):
                    task = create_task((<_BaseRoute>route)._direct(obj))
                else:
                    task = create_task((<_BaseRoute>route)._invoke(obj, dict(inject)))
            except (Exception, asyncio.CancelledError) as error:  # a sync handler's own cancellation: reported
                self._handler_failed(error, obj, route)
                continue
            self._tasks[task] = (obj, route)
            task.add_done_callback(done)

    async def _spawn_bounded(self, tuple group, obj, dict inject):
        """``_spawn`` once there is room for the event's handlers under ``_max_pending``.

        An event with more handlers than ``_max_pending`` waits for an empty bus. A publish
        from one of the bus's own background runs does not wait: that run holds a place
        already, and waiting for itself to finish would never end.
        """
        if asyncio.current_task() not in self._tasks:
            # Room for all of the event's handlers at once: it is started whole or refused.
            room = self._max_pending - min(len(group), self._max_pending)
            queued_at = len(self._slot_waiters)
            while len(self._tasks) > room:
                waiter = asyncio.get_running_loop().create_future()
                self._slot_waiters.insert(queued_at, waiter)
                queued_at = 0  # woken too early: wait again at the front
                try:
                    await waiter
                except BaseException:
                    if waiter.done() and not waiter.cancelled():
                        self._wake_slot_waiter()  # pass on the room it was given
                    raise
                finally:
                    if waiter in self._slot_waiters:
                        self._slot_waiters.remove(waiter)
                if self._closed:
                    raise self._closed_error(obj)
        self._spawn(group, obj, inject)
        if self._slot_waiters and len(self._tasks) < self._max_pending:
            # room left (its handlers finished at once, or failed to start): pass it on, as
            # only a run finishing wakes a waiter otherwise, and the next would wait forever
            self._wake_slot_waiter()

    def _wake_slot_waiters(self):
        """Wake every publish waiting for room (the bus is closing: they will find it closed)."""
        waiters, self._slot_waiters = self._slot_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _wake_slot_waiter(self):
        while self._slot_waiters:
            waiter = self._slot_waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    def _cancel_run(self, task):
        """Cancel a background run on the bus's own account: not reported as a failure."""
        if not task.done():
            self._bus_cancelled.add(task)
            task.cancel()

    def _task_done(self, task):
        obj, route = self._tasks.pop(task)
        error = _outcome(task, self._bus_cancelled)
        if error is not None:
            self._handler_failed(error, obj, route)
        if self._slot_waiters:
            self._wake_slot_waiter()
        if not self._tasks and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _handler_failed(self, error, obj, route):
        """A background failure: to the error hook; logged if there is none, or if it fails."""
        if self._on_error is not None:
            try:
                self._on_error(error, obj, route.handler)
                return
            except Exception as hook_error:
                logger.error("the on_error hook failed on %r", SafeRepr(obj), exc_info=hook_error)
        log_handler_error(error, obj, route.handler)

    def _strategy_for(self, value):
        raise TypeError(f"publish strategies are not supported by {type(self).__name__}")

    async def _run_custom(self, strategy, tuple group, obj, dict inject):
        raise TypeError(f"custom strategies are not supported by {type(self).__name__}")

    def _closed_error(self, obj):
        return RuntimeError(f"{type(self).__name__} is closed: cannot publish {safe_repr(obj)}")


cdef object _publish(object self, PyObject **args, Py_ssize_t nargs, PyObject *kwnames):
    """EventDispatcher.publish(obj, **inject): a METH_FASTCALL|METH_KEYWORDS method.

    It returns what an ``async def publish`` would, an awaitable that publishes once it is
    awaited (and warns if it never is), but as a deferred relay: no coroutine, frame or
    kwargs dict is made, and handlers that finish at once need nothing more.
    """
    if nargs != 1 or (kwnames != NULL and _names_obj(kwnames)):
        obj, inject = _bind_arguments("publish", args, nargs, kwnames)
    else:
        obj, inject = <object>args[0], None if kwnames == NULL else _kwargs(args + 1, kwnames)
    return mediator_deferred(_publish_start, self, obj, inject, _published, NULL, b"EventDispatcher.publish")


cdef object _publish_start(object owner, object obj, object argument, int *finished):
    """The body of ``publish``, run when it is first awaited: the handlers that finish at
    once are done here (``*finished``); what must wait is returned, an awaitable to drive."""
    cdef EventDispatcher self = <EventDispatcher>owner
    cdef dict inject = <dict>argument
    cdef int kind = self._kind
    cdef list errors = None
    cdef list pending = None
    cdef tuple group
    finished[0] = 1
    if self._closed:
        raise self._closed_error(obj)
    strategy = self._strategy
    if inject and "strategy" in inject:
        kind, strategy = self._strategy_for(inject.pop("strategy"))
    group = self._groups.get(type(obj))
    if group is None:
        if not self._polymorphic:
            return None
        group = self._resolve(type(obj))
    if not group:
        return None
    if inject is None and kind != _CONCURRENT:
        inject = {}
    if kind == _BACKGROUND:
        if self._max_pending:
            finished[0] = 0
            return self._spawn_bounded(group, obj, inject)
        self._spawn(group, obj, inject)
        return None
    if kind == _CUSTOM:
        finished[0] = 0
        return self._run_custom(strategy, group, obj, inject)
    if kind == _SEQUENTIAL:
        finished[0] = 0
        return _settle(self._sequential(group, obj, inject), obj)
    for route in group:
        try:
            task = self._start_run(<_BaseRoute>route, obj, inject)
        except (Exception, asyncio.CancelledError) as error:  # a cancellation its own: nothing can cancel a sync step
            errors = _failed(self, errors, error, obj, route)
            continue
        except BaseException:  # SystemExit, KeyboardInterrupt...: the publish ends with it
            _abandon(self, pending, obj, errors)
            raise
        if task is not None:
            if pending is None:
                pending = []
            pending.append((task, route))
    if pending is not None:
        finished[0] = 0
        return _settle(_collect(self, pending, obj, errors), obj)
    if errors is not None:
        raise handler_errors(obj, errors)
    return None


async def _settle(collecting, obj):
    """Await the handlers of a publish that had to wait; raise their failures together."""
    errors = await collecting
    if errors is not None:
        raise handler_errors(obj, errors)


cdef object _published(object owner, object subject, object value):
    """A publish returns None, whatever a strategy's awaitable ended with."""
    return None


mediator_install_method(EventDispatcher, <void *>_publish, _signatures.EventDispatcher.publish)


def log_handler_error(error, event, handler):
    """The default error hook: log the failure with its traceback on the ``mediator`` logger."""
    logger.error(
        "event handler %r failed on %r",
        SafeRepr(handler),
        SafeRepr(event),
        exc_info=(type(error), error, error.__traceback__),
    )


cdef object _outcome(task, set bus_cancelled):
    """The failure a finished run ended with: its exception, or its own cancellation."""
    if not task.cancelled():
        return task.exception()
    if task in bus_cancelled:
        bus_cancelled.discard(task)
        return None
    try:
        task.result()
    except asyncio.CancelledError as cancelled:
        return cancelled
    return None


async def _collect(EventDispatcher dispatcher, list pending, obj, list errors):
    """Wait for the suspended handlers of one publish; their failures join ``errors``.

    A handler that ended cancelled on its own goes to the bus's failure report (an
    exception group holds no cancellation). If the publish itself is cancelled, its
    handlers are cancelled too, and nothing is lost: failures already seen, and any
    still to come, go to the failure report.
    """
    try:
        await asyncio.wait([task for task, _ in pending])
    except BaseException:
        _abandon(dispatcher, pending, obj, errors)
        raise
    for task, route in pending:
        error = _outcome(task, dispatcher._bus_cancelled)
        if error is not None:
            errors = _failed(dispatcher, errors, error, obj, route)
    return errors


cdef void _abandon(EventDispatcher dispatcher, list pending, obj, list errors) except *:
    """A publish ending early (cancelled, or a handler's SystemExit, KeyboardInterrupt...):
    its failures so far go to the bus's failure report, its suspended runs become the bus's
    background runs, cancelled, so none is left unsupervised and no failure is lost."""
    for failure, route in errors or ():
        dispatcher._handler_failed(failure, obj, route)
    for task, route in pending or ():
        dispatcher._tasks[task] = (obj, route)
        task.add_done_callback(dispatcher._task_done)
        dispatcher._cancel_run(task)


cdef list _failed(EventDispatcher dispatcher, list errors, error, obj, route):
    """Record a handler's failure: an ``Exception`` joins the event's group, with a note naming
    the handler and the event; a cancellation of its own, which no group holds, is reported."""
    if not isinstance(error, Exception):
        dispatcher._handler_failed(error, obj, route)
        return errors
    add_note(error, f"raised by event handler {safe_repr(route.handler)} for {safe_repr(obj)}")
    if errors is None:
        errors = []
    errors.append((error, route))
    return errors
