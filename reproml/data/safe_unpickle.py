"""Load learn2learn's miniImagenet pickles without executing arbitrary code.

`pickle.load` can call any importable function; a downloaded file must not. This unpickler
only resolves the few globals that numpy arrays and plain containers need.
"""

import pickle

ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how Python 2 pickles carry byte strings
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "bytearray"),
    ("collections", "OrderedDict"),
}


class AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not a numpy array or plain container)")


def safe_load(path):
    with open(path, "rb") as f:
        return AllowListUnpickler(f, encoding="latin1").load()
