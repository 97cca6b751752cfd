/* The walk behind cowmp.share(), in C: cowmp/immortal.py has the same walk in Python
   (used where this module could not be built) and explains the rules; both must give
   the same result.

   walk(root, immortalize, excluded_types, weakref_count) -> (walked, immortal, mortal)

   Visits every object reachable from root through containers (tuple, list, dict keys
   and values, set and frozenset items) and, for other objects, through what their type
   reports to the garbage collector (tp_traverse: instance attributes, slots, the items
   of other containers).  It does not enter objects that are already immortal, types,
   modules, or objects whose type is in excluded_types (functions, code, frames...).
   For each object visited: computes and caches the hash of an exact str or bytes; and,
   if immortalize is true, makes it immortal unless its type has a finalizer (__del__),
   it has weak references (weakref_count(obj) > 0), or it is an interned string.
   Returns how many objects were visited, made immortal, and left mortal. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* The immortal reference count, as the interpreter this is built for writes it
   (GIL builds on 64-bit systems only; elsewhere nothing is made immortal):
   3.12 and 3.13: ob_refcnt = _Py_IMMORTAL_REFCNT (UINT_MAX: the low 32 bits set);
   3.14 and later: the 32-bit ob_refcnt = _Py_IMMORTAL_INITIAL_REFCNT (3 << 30) and
   ob_flags = _Py_IMMORTAL_FLAGS, as _Py_SetImmortalUntracked() writes them. */
#if PY_VERSION_HEX >= 0x030C0000 && !defined(Py_GIL_DISABLED) && SIZEOF_VOID_P > 4
#  define CAN_IMMORTALIZE 1
#  if PY_VERSION_HEX >= 0x030E0000
#    define IMMORTAL_REFCNT ((Py_ssize_t)_Py_IMMORTAL_INITIAL_REFCNT)
#  else
#    define IMMORTAL_REFCNT ((Py_ssize_t)_Py_IMMORTAL_REFCNT)
#  endif
#  define IS_IMMORTAL(op) _Py_IsImmortal(op)
#else
#  define CAN_IMMORTALIZE 0
#  define IS_IMMORTAL(op) 0
#endif

/* -- a set of object addresses: objects visited but not made immortal ---------------- */

typedef struct {
    void **slots;
    size_t mask;   /* capacity - 1, capacity a power of two */
    size_t used;
} PtrSet;

static int
ptrset_init(PtrSet *set)
{
    set->mask = 1023;
    set->used = 0;
    set->slots = PyMem_Calloc(set->mask + 1, sizeof(void *));
    return set->slots ? 0 : -1;
}

static size_t
ptr_hash(void *p)
{
    size_t h = (size_t)p >> 4;
    h ^= h >> 17;
    h *= (size_t)0x9E3779B97F4A7C15ULL;
    return h ^ (h >> 29);
}

static int
ptrset_grow(PtrSet *set)
{
    size_t old_capacity = set->mask + 1, capacity = old_capacity * 2;
    void **slots = PyMem_Calloc(capacity, sizeof(void *));
    if (slots == NULL) {
        return -1;
    }
    for (size_t i = 0; i < old_capacity; i++) {
        void *p = set->slots[i];
        if (p != NULL) {
            size_t j = ptr_hash(p) & (capacity - 1);
            while (slots[j] != NULL) {
                j = (j + 1) & (capacity - 1);
            }
            slots[j] = p;
        }
    }
    PyMem_Free(set->slots);
    set->slots = slots;
    set->mask = capacity - 1;
    return 0;
}

/* 1 if added, 0 if already there, -1 on error */
static int
ptrset_add(PtrSet *set, void *p)
{
    size_t i = ptr_hash(p) & set->mask;
    while (set->slots[i] != NULL) {
        if (set->slots[i] == p) {
            return 0;
        }
        i = (i + 1) & set->mask;
    }
    set->slots[i] = p;
    set->used++;
    if (set->used * 2 > set->mask && ptrset_grow(set) < 0) {
        return -1;
    }
    return 1;
}

/* -- a stack of objects to visit (borrowed references: everything is reachable from
      the root, and no Python code runs that could drop it, see walk()) --------------- */

typedef struct {
    PyObject **items;
    size_t size;
    size_t capacity;
} Stack;

static int
stack_push(Stack *stack, PyObject *op)
{
    if (stack->size == stack->capacity) {
        size_t capacity = stack->capacity ? stack->capacity * 2 : 4096;
        PyObject **items = PyMem_Realloc(stack->items, capacity * sizeof(PyObject *));
        if (items == NULL) {
            return -1;
        }
        stack->items = items;
        stack->capacity = capacity;
    }
    stack->items[stack->size++] = op;
    return 0;
}

static int
visit_push(PyObject *op, void *stack)
{
    return op == NULL ? 0 : stack_push((Stack *)stack, op);
}

/* -- the walk ---------------------------------------------------------------------- */

typedef struct {
    int immortalize;
    PyObject *excluded;       /* a tuple of types */
    PyObject *weakref_count;  /* callable */
    PtrSet mortal;            /* visited, left mortal */
    Stack stack;
    Py_ssize_t walked, made_immortal, left_mortal;
} Walk;

static int
is_excluded(Walk *w, PyObject *op)
{
    if (PyType_Check(op) || PyModule_Check(op)) {
        return 1;
    }
    PyTypeObject *type = Py_TYPE(op);
    Py_ssize_t n = PyTuple_GET_SIZE(w->excluded);
    for (Py_ssize_t i = 0; i < n; i++) {
        if ((PyObject *)type == PyTuple_GET_ITEM(w->excluded, i)) {
            return 1;
        }
    }
    return 0;
}

/* May op be made immortal?  1 yes, 0 no, -1 error. */
static int
may_immortalize(Walk *w, PyObject *op)
{
    PyTypeObject *type = Py_TYPE(op);
    if (type->tp_finalize != NULL || type->tp_del != NULL) {
        return 0;  /* its finalizer would never run */
    }
    if (PyUnicode_Check(op) && PyUnicode_CHECK_INTERNED(op)) {
        return 0;  /* the interpreter's table of interned strings owns it */
    }
    if (type->tp_weaklistoffset != 0) {
        PyObject *count = PyObject_CallOneArg(w->weakref_count, op);
        if (count == NULL) {
            return -1;
        }
        int referenced = PyObject_IsTrue(count);
        Py_DECREF(count);
        if (referenced) {
            return referenced < 0 ? -1 : 0;  /* its weak references would never die */
        }
    }
    return 1;
}

static int
push_children(Walk *w, PyObject *op)
{
    Stack *stack = &w->stack;
    if (PyTuple_Check(op)) {
        for (Py_ssize_t i = PyTuple_GET_SIZE(op) - 1; i >= 0; i--) {
            if (stack_push(stack, PyTuple_GET_ITEM(op, i)) < 0) {
                return -1;
            }
        }
        return 0;
    }
    if (PyList_Check(op)) {
        for (Py_ssize_t i = PyList_GET_SIZE(op) - 1; i >= 0; i--) {
            if (stack_push(stack, PyList_GET_ITEM(op, i)) < 0) {
                return -1;
            }
        }
        return 0;
    }
    if (PyDict_Check(op)) {  /* keys too: the collector does not report str keys */
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(op, &pos, &key, &value)) {
            if (stack_push(stack, key) < 0 || stack_push(stack, value) < 0) {
                return -1;
            }
        }
        return 0;
    }
    if (PyAnySet_Check(op)) {
        /* items are kept alive by the set, which nothing changes during the walk */
        PyObject *iterator = (PyFrozenSet_Check(op) ? PyFrozenSet_Type.tp_iter
                              : PySet_Type.tp_iter)(op);  /* not a subclass's __iter__ */
        if (iterator == NULL) {
            return -1;
        }
        PyObject *item;
        while ((item = PyIter_Next(iterator)) != NULL) {
            int failed = stack_push(stack, item);
            Py_DECREF(item);
            if (failed < 0) {
                Py_DECREF(iterator);
                return -1;
            }
        }
        Py_DECREF(iterator);
        return PyErr_Occurred() ? -1 : 0;
    }
    traverseproc traverse = Py_TYPE(op)->tp_traverse;
    if (traverse != NULL && PyType_IS_GC(Py_TYPE(op))) {
        return traverse(op, visit_push, stack);
    }
    return 0;
}

static int
visit(Walk *w, PyObject *op)
{
    if (IS_IMMORTAL(op) || is_excluded(w, op)) {
        return 0;
    }
    int immortal = 0;
    if (w->immortalize) {
        immortal = may_immortalize(w, op);
        if (immortal < 0) {
            return -1;
        }
    }
    /* an object left mortal is remembered, lest a cycle be walked forever; one that
       the collector does not track cannot be in a cycle (it is only hashed again) */
    if (!immortal && PyType_IS_GC(Py_TYPE(op))) {
        int added = ptrset_add(&w->mortal, op);
        if (added <= 0) {
            return added;  /* seen already, or an error */
        }
    }
    /* what a first use would write, written now: the cached hash */
    if ((PyUnicode_CheckExact(op) || PyBytes_CheckExact(op)) && PyObject_Hash(op) == -1) {
        return -1;
    }
    w->walked++;
#if CAN_IMMORTALIZE
    if (immortal) {
#  if PY_VERSION_HEX >= 0x030E0000
        op->ob_flags = _Py_IMMORTAL_FLAGS;
#  endif
        Py_SET_REFCNT(op, IMMORTAL_REFCNT);
        w->made_immortal++;
    }
    else {
        w->left_mortal++;
    }
#else
    w->left_mortal++;
#endif
    return push_children(w, op);
}

static PyObject *
walk(PyObject *module, PyObject *args)
{
    PyObject *root, *excluded, *weakref_count;
    int immortalize;
    if (!PyArg_ParseTuple(args, "OpO!O:walk", &root, &immortalize, &PyTuple_Type, &excluded,
                          &weakref_count)) {
        return NULL;
    }
    if (immortalize && !CAN_IMMORTALIZE) {
        PyErr_SetString(PyExc_ValueError,
                        "this interpreter cannot make objects immortal");
        return NULL;
    }
    Walk w = {immortalize, excluded, weakref_count};
    if (ptrset_init(&w.mortal) < 0) {
        return PyErr_NoMemory();
    }
    /* Borrowed references on the stack stay valid: the walk changes no reference count
       but to make objects immortal, runs no Python code (weakref_count is a C function
       of the weakref module, sets are iterated by their own type's iterator), and no
       collection (hence no finalizer) runs meanwhile. */
    int gc_was_enabled = PyGC_Disable();  /* no finalizer may run meanwhile */
    Py_INCREF(root);
    int failed = stack_push(&w.stack, root);
    while (!failed && w.stack.size) {
        PyObject *op = w.stack.items[--w.stack.size];
        failed = visit(&w, op);
    }
    Py_DECREF(root);
    if (gc_was_enabled) {
        PyGC_Enable();
    }
    PyMem_Free(w.stack.items);
    PyMem_Free(w.mortal.slots);
    if (failed) {
        if (!PyErr_Occurred()) {
            PyErr_NoMemory();
        }
        return NULL;
    }
    return Py_BuildValue("nnn", w.walked, w.made_immortal, w.left_mortal);
}

static PyMethodDef methods[] = {
    {"walk", walk, METH_VARARGS, "walk(root, immortalize, excluded_types, weakref_count)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "cowmp._immortal",
    "The walk behind cowmp.share(), in C (see cowmp/immortal.py).", -1, methods,
};

PyMODINIT_FUNC
PyInit__immortal(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "CAN_IMMORTALIZE", CAN_IMMORTALIZE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
