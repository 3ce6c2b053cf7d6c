// random kernels: not written yet.
