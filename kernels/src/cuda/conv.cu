// conv kernels: not written yet.
