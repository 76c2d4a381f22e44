/* Method: a METH_FASTCALL|METH_KEYWORDS C function installed as a method that introspects
 * as the `async def` it stands for.
 *
 * `execute` and `publish` return awaitables, as the `async def` methods of python-mediator
 * 0.7 did, and code decides by `inspect.iscoroutinefunction` / `asyncio.iscoroutinefunction`
 * whether to await a callable or to run it in a thread (Starlette's and FastAPI's background
 * tasks, schedulers): a builtin method reads as not async there, and its awaitable would be
 * dropped unawaited, the event or command with it. So the method is this descriptor instead
 * of a builtin one:
 * - called as `bus.execute(...)` (the interpreter's method call, Py_TPFLAGS_METHOD_DESCRIPTOR)
 *   or through `bus.execute` bound (a `types.MethodType`), it passes the caller's argument
 *   array to the C function as a builtin method would;
 * - it is function-like to `inspect`: `__code__`, `__name__`, `__doc__`, `__defaults__`,
 *   `__kwdefaults__`, `__annotations__`, `__module__` and `__qualname__` are those of its
 *   `async def` signature (mediator/_signatures.py), so it is a coroutine function to
 *   `inspect` from Python 3.10 on (3.9's takes nothing but a true function), and
 *   `inspect.signature` reads it; and it carries the signature's marks, which `asyncio`
 *   reads on every version.
 */
#include <Python.h>
#include <stddef.h>

typedef PyObject *(*mediator_fastcall_fn)(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames);

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    mediator_fastcall_fn fn;
    PyTypeObject *owner;   /* the class it is a method of */
    PyObject *signature;   /* the `async def` it introspects as */
    PyTypeObject *seen;    /* the last class of `self` that passed the check (a bus is of a
                              subclass): held, so it keeps one class alive at most */
} MediatorMethod;

static PyTypeObject MediatorMethod_Type;

static PyObject *method_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    MediatorMethod *method = (MediatorMethod *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1) {  /* the wording of CPython's own method descriptors */
        PyErr_Format(PyExc_TypeError, "descriptor '%U' of '%s' object needs an argument",
                     ((PyFunctionObject *)method->signature)->func_name, method->owner->tp_name);
        return NULL;
    }
    if (Py_TYPE(args[0]) != method->seen) {  /* the bus's class is a subclass: check it once */
        if (!PyObject_TypeCheck(args[0], method->owner)) {
            PyErr_Format(PyExc_TypeError, "descriptor '%U' for '%s' objects doesn't apply to a '%s' object",
                         ((PyFunctionObject *)method->signature)->func_name, method->owner->tp_name,
                         Py_TYPE(args[0])->tp_name);
            return NULL;
        }
        Py_INCREF(Py_TYPE(args[0]));
        Py_XSETREF(method->seen, Py_TYPE(args[0]));
    }
    return method->fn(args[0], args + 1, nargs - 1, kwnames);
}

/* Bound to an instance it is a `types.MethodType`, as a Python function would be. */
static PyObject *method_descr_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None) {
        Py_INCREF(self);
        return self;
    }
    return PyMethod_New(self, obj);
}

/* The `async def` signature's attribute named by `closure`. */
static PyObject *method_get_signature_attr(MediatorMethod *self, void *closure)
{
    return PyObject_GetAttrString(self->signature, (const char *)closure);
}

static PyObject *method_get_objclass(MediatorMethod *self, void *unused)
{
    Py_INCREF(self->owner);
    return (PyObject *)self->owner;
}

#define MEDIATOR_SIGNATURE_ATTR(name) {name, (getter)method_get_signature_attr, NULL, NULL, (void *)name}

static PyGetSetDef method_getset[] = {
    MEDIATOR_SIGNATURE_ATTR("__name__"),
    MEDIATOR_SIGNATURE_ATTR("__qualname__"),
    MEDIATOR_SIGNATURE_ATTR("__doc__"),
    MEDIATOR_SIGNATURE_ATTR("__module__"),
    MEDIATOR_SIGNATURE_ATTR("__code__"),
    MEDIATOR_SIGNATURE_ATTR("__defaults__"),
    MEDIATOR_SIGNATURE_ATTR("__kwdefaults__"),
    MEDIATOR_SIGNATURE_ATTR("__annotations__"),
    MEDIATOR_SIGNATURE_ATTR("_is_coroutine"),         /* asyncio's mark, read below 3.10 */
    MEDIATOR_SIGNATURE_ATTR("_is_coroutine_marker"),  /* inspect's, 3.12 on */
    {"__objclass__", (getter)method_get_objclass, NULL, "The class this method belongs to.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyObject *method_repr(MediatorMethod *self)
{
    return PyUnicode_FromFormat("<method '%U' of '%s' objects>",
                                ((PyFunctionObject *)self->signature)->func_name, self->owner->tp_name);
}

static int method_traverse(MediatorMethod *self, visitproc visit, void *arg)
{
    Py_VISIT(self->owner);
    Py_VISIT(self->signature);
    Py_VISIT(self->seen);
    return 0;
}

static int method_clear(MediatorMethod *self)
{
    Py_CLEAR(self->owner);
    Py_CLEAR(self->signature);
    Py_CLEAR(self->seen);
    return 0;
}

static void method_dealloc(MediatorMethod *self)
{
    PyObject_GC_UnTrack(self);
    method_clear(self);
    PyObject_GC_Del(self);
}

static PyTypeObject MediatorMethod_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    "mediator._core.Method",
    sizeof(MediatorMethod),
    0,
};

/* Installs fn as the method `signature.__name__` of owner; signature is an `async def`. */
static int mediator_install_method(PyObject *owner, mediator_fastcall_fn fn, PyObject *signature)
{
    MediatorMethod *method;
    int status;
    if (!PyFunction_Check(signature) || !(((PyCodeObject *)PyFunction_GET_CODE(signature))->co_flags & CO_COROUTINE)) {
        PyErr_Format(PyExc_TypeError, "a method's signature must be an async def, not %R", signature);
        return -1;
    }
    method = PyObject_GC_New(MediatorMethod, &MediatorMethod_Type);
    if (method == NULL) return -1;
    method->vectorcall = method_vectorcall;
    method->fn = fn;
    Py_INCREF(owner);
    method->owner = (PyTypeObject *)owner;
    Py_INCREF(signature);
    method->signature = signature;
    method->seen = NULL;
    PyObject_GC_Track(method);
    status = PyDict_SetItem(((PyTypeObject *)owner)->tp_dict, ((PyFunctionObject *)signature)->func_name, (PyObject *)method);
    Py_DECREF(method);
    PyType_Modified((PyTypeObject *)owner);
    return status;
}

static int mediator_method_ready(void)
{
    MediatorMethod_Type.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL
                                   | Py_TPFLAGS_METHOD_DESCRIPTOR;
    MediatorMethod_Type.tp_doc = "A compiled method that introspects as the async def it stands for.";
    MediatorMethod_Type.tp_vectorcall_offset = offsetof(MediatorMethod, vectorcall);
    MediatorMethod_Type.tp_call = PyVectorcall_Call;
    MediatorMethod_Type.tp_descr_get = method_descr_get;
    MediatorMethod_Type.tp_repr = (reprfunc)method_repr;
    MediatorMethod_Type.tp_dealloc = (destructor)method_dealloc;
    MediatorMethod_Type.tp_traverse = (traverseproc)method_traverse;
    MediatorMethod_Type.tp_clear = (inquiry)method_clear;
    MediatorMethod_Type.tp_getset = method_getset;
    return PyType_Ready(&MediatorMethod_Type);
}
