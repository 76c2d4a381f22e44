/* Call: a callable object that hands its one argument to a C function, with an owner.
 *
 * It stands where a bound method of a compiled class would (`owner.method`) as the
 * innermost callable of a modifier stack: the interpreter calls it through its own
 * vectorcall slot, with none of a builtin method's argument parsing on the way.
 */
#include <Python.h>

/* fn(owner, arg) -> a new reference, or NULL with an exception set. */
typedef PyObject *(*mediator_call_fn)(PyObject *owner, PyObject *arg);

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *owner;
    mediator_call_fn fn;
    const char *name;  /* what a misuse error calls it */
} MediatorCall;

static PyTypeObject MediatorCall_Type;

static PyObject *call_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    MediatorCall *call = (MediatorCall *)self;
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_Format(PyExc_TypeError, "%s takes exactly one positional argument", call->name);
        return NULL;
    }
    return call->fn(call->owner, args[0]);
}

static PyObject *mediator_call_new(PyObject *owner, mediator_call_fn fn, const char *name)
{
    MediatorCall *self = PyObject_GC_New(MediatorCall, &MediatorCall_Type);
    if (self == NULL) return NULL;
    self->vectorcall = call_vectorcall;
    Py_INCREF(owner);
    self->owner = owner;
    self->fn = fn;
    self->name = name;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static PyObject *call_repr(MediatorCall *self)
{
    if (self->owner == NULL) return PyUnicode_FromFormat("<%s, cleared>", self->name);
    return PyUnicode_FromFormat("<%s of %R>", self->name, self->owner);
}

static int call_traverse(MediatorCall *self, visitproc visit, void *arg)
{
    Py_VISIT(self->owner);
    return 0;
}

static int call_clear(MediatorCall *self)
{
    Py_CLEAR(self->owner);
    return 0;
}

static void call_dealloc(MediatorCall *self)
{
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->owner);
    PyObject_GC_Del(self);
}

/* The owner, read as `call.__self__`, as for a bound method. */
static PyObject *call_get_self(MediatorCall *self, void *unused)
{
    if (self->owner == NULL) Py_RETURN_NONE;
    Py_INCREF(self->owner);
    return self->owner;
}

static PyGetSetDef call_getset[] = {
    {"__self__", (getter)call_get_self, NULL, "The object this call belongs to.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject MediatorCall_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    "mediator._core.Call",
    sizeof(MediatorCall),
    0,
};

static int mediator_call_ready(void)
{
    MediatorCall_Type.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL;
    MediatorCall_Type.tp_doc = "A callable handing its argument to the engine.";
    MediatorCall_Type.tp_vectorcall_offset = offsetof(MediatorCall, vectorcall);
    MediatorCall_Type.tp_call = PyVectorcall_Call;
    MediatorCall_Type.tp_repr = (reprfunc)call_repr;
    MediatorCall_Type.tp_dealloc = (destructor)call_dealloc;
    MediatorCall_Type.tp_traverse = (traverseproc)call_traverse;
    MediatorCall_Type.tp_clear = (inquiry)call_clear;
    MediatorCall_Type.tp_getset = call_getset;
    return PyType_Ready(&MediatorCall_Type);
}
