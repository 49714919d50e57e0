"""What a device may run but the runtime core never needs: the benchmark matrix, doctor, TensorRT engine
planning and building, safe unpacking and clustering.  Tools import the core, never the CLI.
"""
