// noise kernels: not written yet.
