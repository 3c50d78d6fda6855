"""Regenerates the .npy/.npz fixtures used by shared/tests/data.rs (run from this folder).

The tests never run this: the files it writes are committed.
"""
import pickle

import numpy as np

vals = np.array([[0, 1, 2], [3, 100, 127]])
for name, dt in [("u8", "u1"), ("i8", "i1"), ("u16", "u2"), ("i16", "i2"),
                 ("i32", "i4"), ("i64", "i8"), ("f32", "f4"), ("f64", "f8")]:
    for bo, tag in [("<", "le"), (">", "be")]:
        a = vals.astype(dt)
        if name[0] in "if" and name != "u8":
            a = (vals * (-1 if name[0] == "i" else 1.5)).astype(dt)
        a = a.astype(np.dtype(dt).newbyteorder(bo))
        if np.dtype(dt).itemsize == 1 and tag == "be":
            continue
        np.save(f"{name}_{tag}.npy", a)
a = np.arange(6, dtype="<f4").reshape(2, 3)
with open("f32_v2.npy", "wb") as f:
    np.lib.format.write_array(f, a, version=(2, 0))
with open("f32_v3.npy", "wb") as f:
    np.lib.format.write_array(f, a, version=(3, 0))
np.save("fortran.npy", np.asfortranarray(np.arange(6, dtype="<f4").reshape(2, 3)))
np.save("object.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
open("pickle.npy", "wb").write(pickle.dumps([1, 2, 3], protocol=4))
np.save("complex.npy", np.zeros(3, dtype="<c8"))
x = np.arange(4 * 2 * 2, dtype=np.uint8).reshape(4, 2, 2)
y = np.array([0, 1, 2, 1], dtype=np.int64)
np.savez("stored.npz", x=x, y=y)
np.savez_compressed("deflated.npz", x=x, y=y)
np.savez("object.npz", x=np.arange(4, dtype=np.uint8), y=np.array([{"a": 1}, None, 1, 2], dtype=object))
