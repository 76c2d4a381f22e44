/* Relay: an awaitable that drives another one and passes its outcome through a C
 * function on the way out.
 *
 * It stands where a wrapper coroutine (`return transform(await inner)`) would: no frame,
 * no coroutine object, and where the awaiting side sends through `am_send` (CPython 3.10
 * and 3.11 when awaited, every version when a task drives it) no StopIteration either.
 * It has `send`, `throw` and `close`, so asyncio takes it for a coroutine.
 *
 * A deferred relay (`mediator_deferred`) has no inner awaitable yet: a C function makes
 * it when the relay is first awaited, as the body of an `async def` runs only then.
 */
#include <Python.h>

/* on_return(owner, subject, value) -> the relay's value; on_error(owner, subject, error)
   -> a value, or NULL with an exception set (usually `error` again). New references. */
typedef PyObject *(*mediator_relay_fn)(PyObject *owner, PyObject *subject, PyObject *value);

/* start(owner, subject, argument, &finished): a deferred relay's first step. Returns the
   awaitable to drive from there, or, with *finished set, the value it ends with (or NULL
   with an exception set). A new reference. */
typedef PyObject *(*mediator_start_fn)(PyObject *owner, PyObject *subject, PyObject *argument, int *finished);

typedef struct {
    PyObject_HEAD
    PyObject *inner;  /* the awaitable; its iterator once started; NULL once finished;
                         before a deferred relay begins, its start's argument */
    PyObject *owner;
    PyObject *subject;
    mediator_relay_fn on_return;  /* NULL: the inner value as it is */
    mediator_relay_fn on_error;   /* NULL: errors pass through; else it sees Exceptions */
    mediator_start_fn start;      /* a deferred relay not yet begun; else NULL */
    const char *what;             /* a deferred relay: what its never-awaited warning names */
    char started;
    char running;
    char fresh;                   /* nothing sent into it yet: as a just-created coroutine */
    char warn_fresh;              /* a named relay (deferred type, start NULL): warns if dropped fresh */
} MediatorRelay;

enum { RELAY_ERROR = -1, RELAY_RETURN = 0, RELAY_NEXT = 1 };

/* For the steps every dispatch takes: a call of their own costs more than their body. */
#if defined(__GNUC__) || defined(__clang__)
#define RELAY_INLINE static inline __attribute__((always_inline))
#else
#define RELAY_INLINE static inline
#endif

static PyTypeObject MediatorRelay_Type;
/* A deferred relay: a relay of its own type, only for its dealloc (see deferred_dealloc). */
static PyTypeObject MediatorDeferred_Type;

/* Whether `o` is a relay of either type. */
#define RELAY_CHECK(o) (Py_TYPE(o) == &MediatorRelay_Type || Py_TYPE(o) == &MediatorDeferred_Type)

/* Whether `o` is what `await o` iterates: a coroutine, or a relay of either type. */
#define RELAY_OWN_ITERATOR(o) (PyCoro_CheckExact(o) || RELAY_CHECK(o))

/* Relays driving relays nest in C with no Python frame between them (a plain handler
   returning another dispatch, say): each such nested step counts against the recursion
   limit, as the coroutine it stands for would, so that a runaway cascade raises
   RecursionError instead of overflowing the C stack. */
#define RELAY_RECURSION_WHERE " in a mediator dispatch"

/* Relays live for one dispatch: a few are kept for reuse instead of going back to malloc.
   Reviving one takes the private _Py_NewReference; from CPython 3.14 on (free-threading
   builds, a reference tracer that must see every new object) relays go back to the
   allocator instead, through public calls only (MEDIATOR_NO_FREELIST=1 in CFLAGS builds
   that path on older versions, to test it). */
#if PY_VERSION_HEX >= 0x030E0000 || defined(MEDIATOR_NO_FREELIST)
#define RELAY_FREELIST_SIZE 0
#else
#define RELAY_FREELIST_SIZE 16
#endif
#if RELAY_FREELIST_SIZE > 0
static MediatorRelay *relay_freelist[RELAY_FREELIST_SIZE];
static int relay_freelist_count = 0;
#endif

RELAY_INLINE PyObject *mediator_relay(PyObject *inner, PyObject *owner, PyObject *subject,
                                mediator_relay_fn on_return, mediator_relay_fn on_error)
{
    MediatorRelay *self;
#if RELAY_FREELIST_SIZE > 0
    if (relay_freelist_count > 0) {
        self = relay_freelist[--relay_freelist_count];
        _Py_NewReference((PyObject *)self);  /* its type is still set: as CPython's own freelists do */
    } else
#endif
    {
        self = PyObject_GC_New(MediatorRelay, &MediatorRelay_Type);
        if (self == NULL) return NULL;
        self->start = NULL;  /* a relay on the freelist has none: a deferred one clears it as it begins or goes */
    }
    Py_INCREF(inner);
    self->inner = inner;
    Py_INCREF(owner);
    self->owner = owner;
    Py_INCREF(subject);
    self->subject = subject;
    self->on_return = on_return;
    self->on_error = on_error;
    /* A coroutine (or relay) is its own iterator: nothing to look up at the first step. */
    self->started = RELAY_OWN_ITERATOR(inner);
    self->running = 0;
    self->fresh = 1;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

/* A relay whose inner awaitable `start` makes when it is first awaited (see
   mediator_start_fn); `what` names it in the warning given if it never is, and must live
   as long as `owner` (a relay cleared by the GC forgets it). `on_error` sees the inner awaitable's errors, not a failed start's:
   a start deals with its own. */
RELAY_INLINE PyObject *mediator_deferred(mediator_start_fn start, PyObject *owner, PyObject *subject,
                                   PyObject *argument, mediator_relay_fn on_return,
                                   mediator_relay_fn on_error, const char *what)
{
    MediatorRelay *self = (MediatorRelay *)mediator_relay(argument, owner, subject, on_return, on_error);
    if (self == NULL) return NULL;
    Py_SET_TYPE(self, &MediatorDeferred_Type);
    self->start = start;
    self->what = what;
    self->started = 0;
    self->warn_fresh = 0;
    return (PyObject *)self;
}

/* A relay of an awaitable already made (a modifier stack's outermost call) that stands for
   a dispatch as a coroutine would: dropped before its first step it warns, naming `what`
   (which lives as long as `owner`), and quietly closes the awaitable, whose own warning
   would name an engine detail (a layer) instead of the handler. */
RELAY_INLINE PyObject *mediator_relay_named(PyObject *inner, PyObject *owner, PyObject *subject,
                                      mediator_relay_fn on_return, mediator_relay_fn on_error,
                                      const char *what)
{
    MediatorRelay *self = (MediatorRelay *)mediator_relay(inner, owner, subject, on_return, on_error);
    if (self == NULL) return NULL;
    Py_SET_TYPE(self, &MediatorDeferred_Type);
    self->what = what;
    self->warn_fresh = 1;
    return (PyObject *)self;
}

/* Whether `o` is a generator-based coroutine (`@types.coroutine`), which `await` takes
   as its own iterator. */
static int relay_is_iterable_coroutine(PyObject *o)
{
    PyObject *code;
    int flagged;
    if (!PyGen_CheckExact(o)) return 0;
    code = PyObject_GetAttrString(o, "gi_code");
    if (code == NULL) {
        PyErr_Clear();
        return 0;
    }
    flagged = PyCode_Check(code) && (((PyCodeObject *)code)->co_flags & CO_ITERABLE_COROUTINE) != 0;
    Py_DECREF(code);
    return flagged;
}

/* Whether `await o` can work: what a relay accepts as its inner awaitable. */
static int mediator_is_awaitable(PyObject *o)
{
    PyTypeObject *type = Py_TYPE(o);
    return PyCoro_CheckExact(o) || (type->tp_as_async != NULL && type->tp_as_async->am_await != NULL)
        || relay_is_iterable_coroutine(o);
}

/* What `await awaitable` iterates: a coroutine (or relay, or generator-based coroutine)
   itself, else its __await__(). */
static PyObject *relay_await_iter(PyObject *awaitable)
{
    PyTypeObject *type = Py_TYPE(awaitable);
    PyObject *iter;
    if (RELAY_OWN_ITERATOR(awaitable) || relay_is_iterable_coroutine(awaitable)) {
        Py_INCREF(awaitable);
        return awaitable;
    }
    if (type->tp_as_async == NULL || type->tp_as_async->am_await == NULL) {
        PyErr_Format(PyExc_TypeError, "object %.100s can't be used in 'await' expression", type->tp_name);
        return NULL;
    }
    iter = type->tp_as_async->am_await(awaitable);
    if (iter != NULL && !PyIter_Check(iter)) {
        PyErr_Format(PyExc_TypeError, "__await__() returned non-iterator of type '%.100s'", Py_TYPE(iter)->tp_name);
        Py_CLEAR(iter);
    }
    return iter;
}

/* The exception being raised, normalized, with its traceback; the error indicator cleared. */
static PyObject *relay_fetch_error(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL) {
        PyException_SetTraceback(value, traceback);
        Py_DECREF(traceback);
    }
    Py_XDECREF(type);
    return value;
#endif
}

/* Raise what throw(*args) was given where there is nothing to throw it into. */
static void relay_raise_thrown(PyObject *args)
{
    PyObject *first = PyTuple_GET_ITEM(args, 0);
    if (PyExceptionInstance_Check(first)) {
        PyErr_SetObject((PyObject *)Py_TYPE(first), first);
    } else if (PyExceptionClass_Check(first)) {
        PyErr_SetObject(first, PyTuple_GET_SIZE(args) > 1 ? PyTuple_GET_ITEM(args, 1) : NULL);
    } else {
        PyErr_SetString(PyExc_TypeError, "exceptions must be classes or instances deriving from BaseException");
    }
}

/* One step of the iterator: send `arg`, or throw `args` (a tuple) when it is not NULL. */
static int relay_advance_once(PyObject *iter, PyObject *arg, PyObject *args, PyObject **value)
{
    if (args == NULL) {
#if PY_VERSION_HEX >= 0x030A0000
        PySendResult status = PyIter_Send(iter, arg, value);
        return status == PYGEN_NEXT ? RELAY_NEXT : status == PYGEN_RETURN ? RELAY_RETURN : RELAY_ERROR;
#else
        if (arg == Py_None && PyIter_Check(iter)) {
            *value = Py_TYPE(iter)->tp_iternext(iter);
        } else {
            *value = PyObject_CallMethod(iter, "send", "O", arg);
        }
#endif
    } else {
        PyObject *throw = PyObject_GetAttrString(iter, "throw");
        if (throw == NULL) {
            /* An iterator without throw(): the error is raised where it is awaited. */
            if (!PyErr_ExceptionMatches(PyExc_AttributeError)) return RELAY_ERROR;
            PyErr_Clear();
            relay_raise_thrown(args);
            *value = NULL;
            return RELAY_ERROR;
        }
        *value = PyObject_Call(throw, args, NULL);
        Py_DECREF(throw);
    }
    if (*value != NULL) return RELAY_NEXT;
    if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_StopIteration)) return RELAY_ERROR;
    {
        /* returned: the value travels in StopIteration (or is None without one) */
        PyObject *error = PyErr_Occurred() ? relay_fetch_error() : NULL;
        PyObject *result = error != NULL ? PyObject_GetAttrString(error, "value") : (Py_INCREF(Py_None), Py_None);
        Py_XDECREF(error);
        *value = result;
        return result != NULL ? RELAY_RETURN : RELAY_ERROR;
    }
}

/* relay_advance_once, counted against the recursion limit (see RELAY_RECURSION_WHERE). */
static int relay_advance(PyObject *iter, PyObject *arg, PyObject *args, PyObject **value)
{
    int status;
    if (Py_EnterRecursiveCall(RELAY_RECURSION_WHERE)) {
        *value = NULL;
        return RELAY_ERROR;
    }
    status = relay_advance_once(iter, arg, args, value);
    Py_LeaveRecursiveCall();
    return status;
}

/* Raise `error` (a reference stolen), as relay_fetch_error took it. */
static void relay_restore_error(PyObject *error)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(error);
#else
    PyObject *type = (PyObject *)Py_TYPE(error);
    Py_INCREF(type);
    PyErr_Restore(type, error, PyException_GetTraceback(error));
#endif
}

/* A relay ends as a coroutine would: a StopIteration its hooks or start raised must not
   leave it (asyncio would take it for a return, or could not store it in the task), so it
   becomes RuntimeError('coroutine raised StopIteration'), caused by it, as PEP 479 says. */
static void relay_no_stop_iteration(void)
{
    PyObject *stop, *error;
    if (!PyErr_Occurred() || !PyErr_ExceptionMatches(PyExc_StopIteration)) return;
    stop = relay_fetch_error();
    PyErr_SetString(PyExc_RuntimeError, "coroutine raised StopIteration");
    error = relay_fetch_error();
    if (error == NULL) {
        Py_DECREF(stop);
        return;
    }
    Py_INCREF(stop);
    PyException_SetContext(error, stop);  /* both steal a reference */
    PyException_SetCause(error, stop);
    relay_restore_error(error);
}

static void relay_release(MediatorRelay *self)
{
    Py_CLEAR(self->inner);
    Py_CLEAR(self->owner);
    Py_CLEAR(self->subject);
}

/* The inner awaitable is done (status RELAY_RETURN with its value, or RELAY_ERROR):
   the relay's ending. Returns RELAY_RETURN (*out = the relay's value) or RELAY_ERROR. */
RELAY_INLINE int relay_finish(MediatorRelay *self, int status, PyObject *value, PyObject **out)
{
    PyObject *owner = self->owner, *subject = self->subject;
    mediator_relay_fn finish;
    /* the relay's own references go before the hooks run */
    self->owner = self->subject = NULL;
    Py_CLEAR(self->inner);
    *out = NULL;
    if (status == RELAY_RETURN) {
        finish = self->on_return;
        if (finish != NULL) {
            *out = finish(owner, subject, value);
            Py_DECREF(value);
        } else {
            *out = value;
        }
    } else if (self->on_error != NULL && PyErr_ExceptionMatches(PyExc_Exception)) {
        PyObject *error = relay_fetch_error();
        *out = self->on_error(owner, subject, error);
        Py_DECREF(error);
    }
    Py_DECREF(owner);
    Py_DECREF(subject);
    if (*out != NULL) return RELAY_RETURN;
    relay_no_stop_iteration();
    return RELAY_ERROR;
}

/* A deferred relay's first step: its start function runs. RELAY_NEXT: the inner awaitable
   is in place, to be driven; else the relay's ending (as relay_finish). */
static int relay_begin(MediatorRelay *self, PyObject **out)
{
    mediator_start_fn start = self->start;
    PyObject *argument = self->inner, *made;
    int finished = 0;
    self->start = NULL;
    self->inner = NULL;
    self->running = 1;
    made = start(self->owner, self->subject, argument, &finished);
    self->running = 0;
    Py_XDECREF(argument);
    if (made == NULL) {
        self->on_error = NULL;  /* the start dealt with its own failure */
        return relay_finish(self, RELAY_ERROR, NULL, out);
    }
    if (finished) return relay_finish(self, RELAY_RETURN, made, out);
    self->inner = made;
    self->started = RELAY_OWN_ITERATOR(made);
    return RELAY_NEXT;
}

/* Advance the relay: RELAY_NEXT (*out = what the inner awaitable yielded), RELAY_RETURN
   (*out = the relay's value) or RELAY_ERROR (an exception is set). */
static int relay_step(MediatorRelay *self, PyObject *arg, PyObject *throw_args, PyObject **out)
{
    PyObject *iter, *value = NULL;
    int status;
    *out = NULL;
    if (self->running) {
        PyErr_SetString(PyExc_ValueError, "coroutine already executing");
        return RELAY_ERROR;
    }
    if (self->start != NULL) {
        if (throw_args != NULL) {  /* thrown in before it began: it never runs, as a coroutine */
            self->start = NULL;
            relay_release(self);
            relay_raise_thrown(throw_args);
            return RELAY_ERROR;
        }
        if (arg != Py_None) {
            PyErr_SetString(PyExc_TypeError, "can't send non-None value to a just-started coroutine");
            return RELAY_ERROR;
        }
        status = relay_begin(self, out);
        if (status != RELAY_NEXT) return status;
    }
    if (self->inner == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited coroutine");
        return RELAY_ERROR;
    }
    if (self->fresh) {
        if (arg != Py_None && throw_args == NULL) {  /* refused, and nothing changes: as a coroutine */
            PyErr_SetString(PyExc_TypeError, "can't send non-None value to a just-started coroutine");
            return RELAY_ERROR;
        }
        self->fresh = 0;
    }
    if (!self->started) {
        iter = relay_await_iter(self->inner);
        self->started = 1;
        if (iter == NULL) return relay_finish(self, RELAY_ERROR, NULL, out);
        Py_SETREF(self->inner, iter);
    }
    iter = self->inner;
    Py_INCREF(iter);
    self->running = 1;
    status = relay_advance(iter, arg, throw_args, &value);
    self->running = 0;
    Py_DECREF(iter);
    if (status == RELAY_NEXT) {
        *out = value;
        return RELAY_NEXT;
    }
    return relay_finish(self, status, value, out);
}

/* A return as the iterator protocol spells it: StopIteration carrying the value. */
static void relay_set_stop(PyObject *value)
{
    if (PyTuple_Check(value) || PyExceptionInstance_Check(value)) {
        PyObject *stop = PyObject_CallFunctionObjArgs(PyExc_StopIteration, value, NULL);
        if (stop == NULL) return;
        PyErr_SetObject(PyExc_StopIteration, stop);
        Py_DECREF(stop);
    } else {
        PyErr_SetObject(PyExc_StopIteration, value);
    }
}

static PyObject *relay_iternext(MediatorRelay *self)
{
    PyObject *out;
    if (relay_step(self, Py_None, NULL, &out) != RELAY_RETURN) return out;
    if (out != Py_None) relay_set_stop(out);  /* a bare NULL reads as `return None` */
    Py_DECREF(out);
    return NULL;
}

static PyObject *relay_resume(MediatorRelay *self, PyObject *arg, PyObject *throw_args)
{
    PyObject *out;
    if (relay_step(self, arg, throw_args, &out) != RELAY_RETURN) return out;
    if (out == Py_None) PyErr_SetNone(PyExc_StopIteration);
    else relay_set_stop(out);
    Py_DECREF(out);
    return NULL;
}

static PyObject *relay_send(MediatorRelay *self, PyObject *arg)
{
    return relay_resume(self, arg, NULL);
}

static PyObject *relay_throw(MediatorRelay *self, PyObject *args)
{
    if (PyTuple_GET_SIZE(args) < 1 || PyTuple_GET_SIZE(args) > 3) {
        PyErr_SetString(PyExc_TypeError, "throw expected 1 to 3 arguments");
        return NULL;
    }
    return relay_resume(self, Py_None, args);
}

/* close(): close the inner awaitable. An Exception its closing raises (a coroutine that
   ignored GeneratorExit) reaches on_error, as it would reach the `except` around the
   `await` of a wrapper coroutine being closed. */
static PyObject *relay_close(MediatorRelay *self, PyObject *unused)
{
    PyObject *inner = self->inner, *owner, *subject, *result;
    if (self->running) {
        PyErr_SetString(PyExc_ValueError, "coroutine already executing");
        return NULL;
    }
    if (inner == NULL || self->start != NULL) {  /* done, or a deferred relay never begun */
        self->start = NULL;
        relay_release(self);
        Py_RETURN_NONE;
    }
    /* the relay lets go of everything first; owner and subject are kept for on_error */
    owner = self->owner;
    subject = self->subject;
    self->inner = self->owner = self->subject = NULL;
    result = PyObject_CallMethod(inner, "close", NULL);
    if (result == NULL && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();  /* an iterator without close(): nothing to close, as for `yield from` */
        result = Py_None;
        Py_INCREF(result);
    }
    if (result == NULL && self->on_error != NULL && PyErr_ExceptionMatches(PyExc_Exception)) {
        PyObject *error = relay_fetch_error();
        result = self->on_error(owner, subject, error);
        Py_DECREF(error);
        if (result != NULL) {  /* handled: the closing ends as a return would */
            Py_SETREF(result, Py_None);
            Py_INCREF(result);
        }
    }
    Py_DECREF(inner);
    Py_XDECREF(owner);
    Py_XDECREF(subject);
    return result;
}

#if PY_VERSION_HEX >= 0x030A0000
static PySendResult relay_am_send(MediatorRelay *self, PyObject *arg, PyObject **result)
{
    PyObject *inner, *value;
    PySendResult sent;
    int status;
    if (self->start != NULL && arg == Py_None && !self->running) {  /* a deferred relay begins */
        status = relay_begin(self, result);
        if (status != RELAY_NEXT) return status == RELAY_RETURN ? PYGEN_RETURN : PYGEN_ERROR;
    }
    inner = self->inner;
    /* The common case, a started coroutine (or relay) inside, is sent to directly. */
    if (self->started && !self->running && inner != NULL && (arg == Py_None || !self->fresh)
            && Py_TYPE(inner)->tp_as_async != NULL && Py_TYPE(inner)->tp_as_async->am_send != NULL) {
        self->fresh = 0;
        Py_INCREF(inner);
        self->running = 1;
        if (RELAY_CHECK(inner)) {  /* a relay inside: see RELAY_RECURSION_WHERE */
            if (Py_EnterRecursiveCall(RELAY_RECURSION_WHERE)) {
                sent = PYGEN_ERROR;
                value = NULL;
            } else {
                sent = Py_TYPE(inner)->tp_as_async->am_send(inner, arg, &value);
                Py_LeaveRecursiveCall();
            }
        } else {
            sent = Py_TYPE(inner)->tp_as_async->am_send(inner, arg, &value);
        }
        self->running = 0;
        Py_DECREF(inner);
        if (sent == PYGEN_NEXT) {
            *result = value;
            return PYGEN_NEXT;
        }
        status = relay_finish(self, sent == PYGEN_RETURN ? RELAY_RETURN : RELAY_ERROR, value, result);
    } else {
        status = relay_step(self, arg, NULL, result);
    }
    return status == RELAY_NEXT ? PYGEN_NEXT : status == RELAY_RETURN ? PYGEN_RETURN : PYGEN_ERROR;
}
#endif

static PyObject *relay_await(PyObject *self)
{
    Py_INCREF(self);
    return self;
}

static int relay_traverse(MediatorRelay *self, visitproc visit, void *arg)
{
    Py_VISIT(self->inner);
    Py_VISIT(self->owner);
    Py_VISIT(self->subject);
    return 0;
}

static int relay_clear(MediatorRelay *self)
{
    self->what = NULL;  /* it may live in the owner, released here: see relay_warn_unawaited */
    relay_release(self);
    return 0;
}

/* A named relay dropped fresh: what it holds and nothing else does never ran either, and
   says nothing of its own (a coroutine is closed, a deferred relay forgets its start). */
static void relay_quiet(PyObject *inner)
{
    PyObject *closed;
    if (inner == NULL || Py_REFCNT(inner) != 1) return;
    if (PyCoro_CheckExact(inner)) {
        closed = PyObject_CallMethod(inner, "close", NULL);
        if (closed == NULL) PyErr_WriteUnraisable(inner);
        Py_XDECREF(closed);
    } else if (Py_TYPE(inner) == &MediatorDeferred_Type && !((MediatorRelay *)inner)->running) {
        ((MediatorRelay *)inner)->start = NULL;
        ((MediatorRelay *)inner)->warn_fresh = 0;
    }
}

/* A deferred relay dropped before it began: its body never ran, as for a coroutine. */
static void relay_warn_unawaited(MediatorRelay *self)
{
    const char *what = self->what != NULL ? self->what : "mediator dispatch";  /* NULL: cleared by the GC */
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *pending = PyErr_GetRaisedException();
#else
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
#endif
    if (self->start == NULL) relay_quiet(self->inner);  /* a named relay: see mediator_relay_named */
    if (PyErr_WarnFormat(PyExc_RuntimeWarning, 1, "coroutine '%s' was never awaited", what) < 0) {
        PyErr_WriteUnraisable(NULL);
    }
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(pending);
#else
    PyErr_Restore(type, value, traceback);
#endif
}

static void relay_dealloc(MediatorRelay *self)
{
    PyObject_GC_UnTrack(self);
    relay_release(self);
#if RELAY_FREELIST_SIZE > 0
    if (relay_freelist_count < RELAY_FREELIST_SIZE) {
        relay_freelist[relay_freelist_count++] = self;
        return;
    }
#endif
    PyObject_GC_Del(self);
}

/* A deferred relay dropped before it began warns as a coroutine would; then it goes the
   way of any relay, back to being one (the freelist holds plain relays). Its own type keeps
   this check off the dealloc of the relays every dispatch makes. */
static void deferred_dealloc(MediatorRelay *self)
{
    PyObject_GC_UnTrack(self);
    if (self->start != NULL) {
        self->start = NULL;
        relay_warn_unawaited(self);
    } else if (self->warn_fresh && self->fresh && self->inner != NULL) {
        relay_warn_unawaited(self);
    }
    Py_SET_TYPE(self, &MediatorRelay_Type);
    relay_dealloc(self);
}

static PyMethodDef relay_methods[] = {
    {"send", (PyCFunction)relay_send, METH_O, "send(value): resume with value."},
    {"throw", (PyCFunction)relay_throw, METH_VARARGS, "throw(error): raise error where it waits."},
    {"close", (PyCFunction)relay_close, METH_NOARGS, "close(): close the awaitable it drives."},
    {NULL, NULL, 0, NULL},
};

static PyAsyncMethods relay_as_async = {
    relay_await, /* am_await */
    0,           /* am_aiter */
    0,           /* am_anext */
#if PY_VERSION_HEX >= 0x030A0000
    (sendfunc)relay_am_send,
#endif
};

static PyTypeObject MediatorRelay_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    "mediator._core.Relay",
    sizeof(MediatorRelay),
    0,
};

static PyTypeObject MediatorDeferred_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    "mediator._core.DeferredRelay",
    sizeof(MediatorRelay),
    0,
};

/* Both relay types share every slot but their dealloc. */
static int relay_type_ready(PyTypeObject *type, destructor dealloc, const char *doc)
{
    type->tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC;
    type->tp_doc = doc;
    type->tp_dealloc = dealloc;
    type->tp_traverse = (traverseproc)relay_traverse;
    type->tp_clear = (inquiry)relay_clear;
    type->tp_iter = PyObject_SelfIter;
    type->tp_iternext = (iternextfunc)relay_iternext;
    type->tp_methods = relay_methods;
    type->tp_as_async = &relay_as_async;
    return PyType_Ready(type);
}

static int mediator_relay_ready(void)
{
    if (relay_type_ready(&MediatorRelay_Type, (destructor)relay_dealloc,
                         "An awaitable relaying another one's outcome through the engine.") < 0) return -1;
    return relay_type_ready(&MediatorDeferred_Type, (destructor)deferred_dealloc,
                            "A relay whose awaitable is made when it is first awaited.");
}
