// upsample kernels: not written yet.
