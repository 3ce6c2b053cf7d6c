// group_norm kernels: not written yet.
